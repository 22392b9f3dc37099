"""Shared by the Container Service tests: a small local "converter" registered in the emulator as the command the
operator, the sensor and the example DAG launch, and sessions to run it on.

The converter plays ``dcm2niix``: it reads every DICOM file in its input mount (a session's folder, or one scan's
DICOM resource) and writes one ``.nii`` file per series into its output mount, which the Container Service uploads
as the ``NIFTI`` resource of the session (or scan) it ran on.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pydicom

from xnat_provider.client import XnatClient
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.containers import RunContext, simple_command
from xnat_provider.testing.samples import make_study, zip_files


def nifti_like(rows: int, columns: int, slices: int) -> bytes:
    """A NIfTI-1 header's first fields (sizeof_hdr 348, the dimensions) padded to 352 bytes: enough to look like one."""
    header = struct.pack("<i", 348) + b"\0" * 36 + struct.pack("<8h", 3, columns, rows, slices, 1, 1, 1, 1)
    return header.ljust(344, b"\0") + b"n+1\0" + b"\0" * 4


def convert(ctx: RunContext) -> int:
    """One ``series{N}.nii`` per DICOM series found in the input mount; says what it did on stdout."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for f in sorted(ctx.mounts["in"].rglob("*")):
        if f.is_file():
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:
                continue
            series.setdefault(str(ds.SeriesNumber), []).append(ds)
    if not series:
        ctx.stderr.write("dcm2niix: no DICOM files found in /input\n")
        return 2
    for number, datasets in sorted(series.items()):
        first = datasets[0]
        (ctx.mounts["out"] / f"series{number}.nii").write_bytes(nifti_like(int(first.Rows), int(first.Columns),
                                                                           len(datasets)))
    ctx.stdout.write(f"dcm2niix: converted {sum(len(v) for v in series.values())} files in {len(series)} "
                     "series\n")
    return 0


def register_converter(emu: XnatEmulator, *, context: str = "session", name: str = "dcm2niix",
                       enable_for: tuple[str, ...] = ("P1",), run: Any = convert, **kwargs: Any) -> dict:
    """The converter as a command with one wrapper (``dcm2niix-session`` or ``dcm2niix-scan``), enabled for P1."""
    return emu.containers.register_command(
        simple_command(name, image=f"emulator/{name}:1.0", context=context, output_format="NIFTI", **kwargs),
        run=run, enable_for=list(enable_for))


def archive_session(emu: XnatEmulator, tmp_path: Path, label: str = "S01_MR1", subject: str = "S01",
                    series: tuple[tuple[int, str], ...] = ((1, "T1"), (2, "T2")), project: str = "P1") -> str:
    """A real study imported straight into the archive; returns its label."""
    study = make_study(tmp_path / f"dicom-{label}", patient_name=subject, patient_id=label, series=series,
                       instances=2, uid_seed=label)
    with XnatClient(emu.url, "admin", "admin") as c:
        c.import_dicom(zip_files(study.files, tmp_path / f"{label}.zip"), project, destination="archive")
    return label
