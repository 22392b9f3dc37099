"""The example DAGs with their working data on object storage, run end to end as the other example-DAG tests run
them (``dag.test()`` against the emulator, real DICOM), checked on XNAT and in the store.

On a Celery deployment each task may run on another machine: what one task leaves for the next must be in a
store every worker reaches, and the XComs must name it (strings), not hold it. The stores here are the S3-like
``blob`` store of ``tests/object_storage.py``, attached under an Airflow connection id as ``s3://`` is under
``aws_default``, fsspec's memory store, and ``file://``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from tests import object_storage
from tests.airflow_helpers import run_dag
from tests.object_storage import BlobFileSystem, attach_store, detach_store
from xnat_provider.client import XnatClient
from xnat_provider.testing.samples import make_study, zip_files

CONN = "work_store"
memory_fs = object_storage.memory_fs  # a fresh memory:// store per test


@pytest.fixture
def blob(tmp_path: Path) -> Any:
    fs = BlobFileSystem(tmp_path / "blobstore")
    attach_store("blob", fs, conn_id=CONN)
    yield fs
    detach_store("blob", CONN)


@pytest.fixture
def archived_session(xnat_conn, tmp_path: Path) -> str:
    study = make_study(tmp_path / "s", patient_name="SUBJ030", patient_id="SUBJ030_MR1", uid_seed="os",
                       series=((1, "T1"), (2, "T2")), instances=3)
    with XnatClient(xnat_conn.url, "admin", "admin") as c:
        c.import_dicom(zip_files(study.files, tmp_path / "s.zip"), "P1", destination="archive")
    return "SUBJ030_MR1"


def strings_only(value: Any) -> None:
    """An XCom made of strings, numbers, lists and dicts: nothing that only one machine could read."""
    if isinstance(value, dict):
        for v in value.values():
            strings_only(v)
    elif isinstance(value, list):
        for v in value:
            strings_only(v)
    else:
        assert value is None or isinstance(value, (str, int, float, bool)), repr(value)


def check_pipeline(result: Any, emu: Any, read: Any, url: str) -> None:
    """XNAT holds the summaries; the store holds what the tasks left, read with the store's own file system."""
    assert result.state == "success", result.tis
    for value in result.xcoms.values():
        strings_only(value)
    downloads = [v for (t, _), v in result.xcoms.items() if t == "download_scan"]
    assert sorted(d["scans"][0] for d in downloads) == ["1", "2"]
    assert all(d["dest"] == f"{url}/P1/SUBJ030_MR1/download" and d["manifest"].startswith(url) for d in downloads)
    summaries = [v for (t, _), v in result.xcoms.items() if t == "summarise"]
    assert sorted(s["source"] for s in summaries) == [f"{url}/P1/SUBJ030_MR1/summary/{n}" for n in ("1", "2")]
    with XnatClient(emu.url, "admin", "admin") as c:
        for scan in ("1", "2"):
            path = c.object_path("P1", "SUBJ030", "SUBJ030_MR1", scan=scan) + "/resources/SUMMARY"
            files = {f.path: f for f in c.list_files(path)}
            assert sorted(files) == ["preview.png", "summary.json"]
            stored = read(f"P1/SUBJ030_MR1/summary/{scan}/summary.json")
            assert json.loads(stored)["slices"] == 3 and json.loads(stored)["scan"] == scan
            assert files["summary.json"].digest == hashlib.md5(stored).hexdigest()  # the bytes that were written
            assert read(f"P1/SUBJ030_MR1/summary/{scan}/preview.png").startswith(b"\x89PNG\r\n\x1a\n")
            dicom = [f for f in c.list_files(c.object_path("P1", "SUBJ030", "SUBJ030_MR1", scan=scan)
                                             + "/resources/DICOM")]
            for f in dicom:  # every downloaded file is in the store, verified
                assert hashlib.md5(read(f"P1/SUBJ030_MR1/download/{scan}/DICOM/{f.path}")).hexdigest() == f.digest
        assert c.get_fields("P1", experiment="SUBJ030_MR1")["scans_summarised"] == "2"


def test_scan_pipeline_with_work_on_object_storage(airflow_db, xnat_conn, archived_session, blob,
                                                   tmp_path: Path) -> None:
    work = "blob://bucket/pipeline"
    result = run_dag("xnat_scan_pipeline", {"project": "P1", "experiment": archived_session, "work": work,
                                            "work_conn_id": CONN})
    check_pipeline(result, xnat_conn, lambda key: blob.cat_file(f"bucket/pipeline/{key}"),
                   f"blob://{CONN}@bucket/pipeline")
    assert not [k for k in blob.find("bucket") if k.endswith(".part")]
    assert not (tmp_path / "pipeline").exists()  # nothing went to a local folder of that name


def test_scan_pipeline_with_work_in_memory_storage(airflow_db, xnat_conn, archived_session, memory_fs) -> None:
    """A store with no connection id (the file system's default credentials)."""
    result = run_dag("xnat_scan_pipeline", {"project": "P1", "experiment": archived_session,
                                            "work": "memory://bucket/w", "work_conn_id": ""})
    check_pipeline(result, xnat_conn, lambda key: memory_fs.cat_file(f"/bucket/w/{key}"), "memory://bucket/w")


def test_scan_pipeline_with_a_file_url(airflow_db, xnat_conn, archived_session, tmp_path: Path) -> None:
    work = tmp_path / "shared"
    result = run_dag("xnat_scan_pipeline", {"project": "P1", "experiment": archived_session, "work": f"file://{work}"})
    check_pipeline(result, xnat_conn, lambda key: (work / key).read_bytes(), f"file://{work}")


def test_scan_pipeline_with_a_store_no_provider_serves_fails_before_any_download(
        airflow_db, xnat_conn, archived_session) -> None:
    result = run_dag("xnat_scan_pipeline", {"project": "P1", "experiment": archived_session,
                                            "work": "nope://bucket/w"})
    assert result.state == "failed"
    failed = {t for (t, _), state in result.tis.items() if state == "failed"}
    assert failed == {"download_scan"}
    assert result.tries[("download_scan", 0)] == 1  # bad input: not retried (xnat_retry_policy)
    assert xnat_conn.request_count("GET", r"/files/.+") == 0


# ---- scheduled ingest with the landing folder on object storage ----------------------------------------------------
def land(fs: Any, root: str, tmp_path: Path) -> None:
    """What the local ``landing`` fixture holds, in a store: a zip (two series) and a folder (one series)."""
    a = make_study(tmp_path / "a", patient_name="SUBJ001", patient_id="SUBJ001_MR1", uid_seed="a")
    fs.pipe_file(f"{root}/subj001.zip", zip_files(a.files, tmp_path / "subj001.zip").read_bytes())
    b = make_study(tmp_path / "b", patient_name="SUBJ002", patient_id="SUBJ002_MR1", series=((5, "FLAIR"),),
                   uid_seed="b")
    for p in b.files:
        fs.pipe_file(f"{root}/subj002/{p.relative_to(tmp_path / 'b').as_posix()}", p.read_bytes())


@pytest.mark.parametrize("kind", ["blob", "memory", "file"])
def test_scheduled_ingest_with_the_landing_on_object_storage(airflow_db, xnat_conn, tmp_path: Path, kind: str,
                                                             request: pytest.FixtureRequest) -> None:
    """``file://``: a store with real folders (a local disk or a shared mount given as a URL), where a move needs
    its target folder to exist; the distributed test runs the DAG so."""
    if kind == "file":
        fs, root = LocalFileSystem(auto_mkdir=True), (tmp_path / "store" / "landing").as_posix()  # to seed it
    else:
        fs = request.getfixturevalue("blob" if kind == "blob" else "memory_fs")
        root = "bucket/landing" if kind == "blob" else "/bucket/landing"
    land(fs, root, tmp_path)
    files = sorted(p[len(root) + 1:] for p in fs.find(root))
    landing = f"file://{root}" if kind == "file" else f"{kind}://bucket/landing"
    conf = {"landing": landing, "landing_conn_id": CONN if kind == "blob" else "", "project": "P1",
            "quiet_seconds": 0}
    result = run_dag("xnat_scheduled_ingest", conf)
    assert result.state == "success", result.tis
    for value in result.xcoms.values():
        strings_only(value)
    url = f"blob://{CONN}@bucket/landing" if kind == "blob" else landing
    assert result.xcom("find_inputs") == [f"{url}/subj001.zip", f"{url}/subj002"]
    with XnatClient(xnat_conn.url, "admin", "admin") as c:
        assert sorted(e.label for e in c.list_experiments("P1")) == ["SUBJ001_MR1", "SUBJ002_MR1"]
        assert c.get_fields("P1", experiment="SUBJ001_MR1")["source_file"] == "subj001.zip"
        assert c.get_fields("P1", experiment="SUBJ002_MR1")["source_file"] == "subj002"
        assert c.list_prearchive("P1") == []
    # Every input moved under done/ in the store, whole; nothing left in the landing folder itself.
    assert sorted(p[len(root) + 1:] for p in fs.find(root)) == [f"done/{f}" for f in files]
    assert sorted(result.xcom("move_to_done")) == [f"{url}/done/subj001.zip", f"{url}/done/subj002"]
    # Nothing new: the next run finds no input (done/ is left alone) and succeeds.
    again = run_dag("xnat_scheduled_ingest", conf)
    assert again.state == "success" and again.xcom("find_inputs") == []
