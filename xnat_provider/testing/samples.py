"""Real DICOM for tests and demos, made from the files pydicom ships.

pydicom's test files are real acquisitions (``MR_small.dcm`` is a 64x64 MR slice, ``CT_small.dcm`` a CT
slice). ``make_study`` copies one of them into a study with several series and instances, giving each a fresh
UID set and the routing tags XNAT reads, so tests can import realistic multi-series sessions offline.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

TEMPLATES = {"MR": "MR_small.dcm", "CT": "CT_small.dcm"}


@dataclass
class Study:
    study_uid: str
    files: list[Path] = field(default_factory=list)
    series: dict[str, list[Path]] = field(default_factory=dict)  # series number -> files


def template(modality: str = "MR") -> Path:
    path = get_testdata_file(TEMPLATES[modality])
    if path is None:  # pragma: no cover - pydicom always ships these
        raise FileNotFoundError(TEMPLATES[modality])
    return Path(path)


def make_study(
    dest: str | Path,
    *,
    patient_name: str = "S01",
    patient_id: str = "S01_MR1",
    modality: str = "MR",
    series: Iterable[tuple[int, str]] = ((1, "T1"), (2, "T2")),
    instances: int = 3,
    comments: str | None = None,
    study_description: str | None = None,
    study_uid: str | None = None,
    uid_seed: str | None = None,
) -> Study:
    """Write a study of real DICOM files under ``dest``; returns its UID and files by series number.

    With ``uid_seed`` every UID is derived from the seed, so the same call makes the same study again (what a
    scanner resending a study does); without it each call makes a new study.
    """

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=[uid_seed, *map(str, parts)]) if uid_seed else generate_uid()

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    study = Study(study_uid or uid("study"))
    base = pydicom.dcmread(template(modality))
    for number, description in series:
        series_uid = uid("series", number)
        for i in range(1, instances + 1):
            ds = base.copy()
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.StudyInstanceUID = study.study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = number
            ds.SeriesDescription = description
            ds.InstanceNumber = i
            ds.SOPInstanceUID = uid("instance", number, i)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyDate = "20240115"
            ds.StudyTime = "101500"
            if comments is not None:
                ds.PatientComments = comments
            if study_description is not None:
                ds.StudyDescription = study_description
            path = dest / f"{patient_id}_s{number}_i{i:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            study.files.append(path)
            study.series.setdefault(str(number), []).append(path)
    return study


def zip_files(files: Iterable[Path], zip_path: str | Path, root: Path | None = None) -> Path:
    """Zip files (relative to ``root`` when given, else by name) for the import service."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.relative_to(root).as_posix() if root else f.name)
    return zip_path
