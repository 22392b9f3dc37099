"""Scheduled ingest: DICOM dropped in a landing folder ends up archived in XNAT, with its provenance recorded.

Every hour: find new zips and folders in the landing folder (skipping anything still being written), import
each into the project's prearchive (one mapped task per input), wait with the deferrable prearchive sensor
until each session is READY and quiet, archive it, record where and when the data came from as custom fields,
and only then move the input to ``done/``.

Safe to fail anywhere and run again:
- a failure leaves the input in the landing folder for the next run;
- a retried import never sends data twice (the operator remembers what it sent and looks it up first);
- a rerun over data that was archived before (say, archived but not yet moved to ``done/``) merges into the
  same session (``on_conflict="append"``) instead of creating a second one;
- auth and bad-input errors fail at once (no retries that could lock the account or repeat a mistake);
  server and transfer errors are retried with exponential backoff.

Params: ``landing`` (default ``$XNAT_LANDING`` or ``/data/landing``), ``landing_conn_id`` (default
``$XNAT_LANDING_CONN_ID``), ``project`` (default ``$XNAT_PROJECT`` or ``P1``), ``quiet_seconds`` (inputs younger
than this are left for the next run).

The landing folder may be object storage that every worker reaches (on a Celery deployment the task that lists
the inputs, the imports and the final move may each run on another machine): ``s3://bucket/landing`` with
``landing_conn_id`` the Airflow connection of its file system (``aws_default``; needs the Amazon provider),
``gs://...``, or ``file:///shared/landing``. The inputs are then named by URL in the XComs, imported straight
from the store (headers read there, files streamed into the import body), and moved to ``done/`` there.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, ObjectStoragePath, Param, get_current_context, task

from xnat_provider.operators.archive import XnatArchiveOperator
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.retry import xnat_retry_policy
from xnat_provider.runs import run_time
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor

# Seconds between polls, and the quiet period a session needs; small values suit demos and tests.
POLL = float(os.environ.get("XNAT_EXAMPLE_POLL_SECONDS", "15"))
QUIET = float(os.environ.get("XNAT_EXAMPLE_QUIET_SECONDS", "5"))

DEFAULT_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "retry_policy": xnat_retry_policy(),
}


def landing_path(location: str, conn_id: str | None = None) -> Path | ObjectStoragePath:
    """The landing folder or an input in it: a local path, or object storage for a URL (``conn_id``: the Airflow
    connection of its file system; None for the default credentials). On object storage the tasks below work
    through the path's ``fs`` and ``path``: the store Airflow attached for the connection."""
    return ObjectStoragePath(location, conn_id=conn_id or None) if "://" in location else Path(location)


def written_at(fs: Any, info: dict[str, Any]) -> float:
    """When an object was last written, from its listing where the store gives it (S3 ``LastModified``, GCS
    ``updated``, local ``mtime``...), else asked of the store."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
        if isinstance(value, str) and value:
            return pendulum.parse(value).timestamp()
    return fs.modified(info["name"]).timestamp()


def storage_inputs(landing: ObjectStoragePath, quiet_seconds: float) -> list[str]:
    """The inputs on object storage that nobody has written to for ``quiet_seconds``, as URLs: one listing of the
    landing folder, and one of each input folder (an object store's folder is the objects under its prefix)."""
    fs, root = landing.fs, landing.path
    if not fs.isdir(root):
        raise FileNotFoundError(f"The landing folder {landing} does not exist.")
    now, found = time.time(), []
    for info in sorted(fs.ls(root, detail=True), key=lambda i: i["name"]):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(".") or name in ("done", "failed"):
            continue
        inside = fs.find(info["name"], detail=True).values() if info.get("type") == "directory" else [info]
        newest = max((written_at(fs, i) for i in inside), default=0.0)
        if now - newest >= quiet_seconds:
            found.append(str(landing / name))
    return found


with DAG(
    "xnat_scheduled_ingest",
    description="Landing folder -> XNAT prearchive -> archive, with provenance fields",
    schedule="@hourly",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two runs must not pick up the same input
    default_args=DEFAULT_ARGS,
    params={
        "landing": Param(os.environ.get("XNAT_LANDING", "/data/landing"), type="string",
                         description="a local folder, or object storage: s3://bucket/landing, gs://..., file:///..."),
        "landing_conn_id": Param(os.environ.get("XNAT_LANDING_CONN_ID", ""), type="string",
                                 description="the Airflow connection of the landing's object storage (aws_default "
                                             "for s3://); empty: the default credentials"),
        "project": Param(os.environ.get("XNAT_PROJECT", "P1"), type="string"),
        "quiet_seconds": Param(60, type="integer", minimum=0),
    },
    tags=["xnat", "example"],
) as dag:

    @task(retries=0)
    def find_inputs(params: dict | None = None) -> list[str]:
        """Zips, tars and folders in the landing folder that nobody has written to for ``quiet_seconds``."""
        landing = landing_path(params["landing"], params["landing_conn_id"])
        if not isinstance(landing, Path):
            found = storage_inputs(landing, params["quiet_seconds"])
            print(f"{len(found)} input(s) ready in {landing}")
            return found
        if not landing.is_dir():
            raise FileNotFoundError(f"The landing folder {landing} does not exist.")
        now, found = time.time(), []
        for p in sorted(landing.iterdir()):
            if p.name.startswith(".") or p.name in ("done", "failed"):
                continue
            newest = max((f.stat().st_mtime for f in [p, *p.rglob("*")]), default=p.stat().st_mtime)
            if now - newest >= params["quiet_seconds"]:
                found.append(str(p))
        print(f"{len(found)} input(s) ready in {landing}")
        return found

    inputs = find_inputs()

    imported = XnatImportOperator.partial(
        task_id="import_to_prearchive", project="{{ params.project }}", destination="prearchive",
        storage_conn_id="{{ params.landing_conn_id }}", map_index_template="{{ task.source.split('/')[-1] }}",
    ).expand(source=inputs)

    @task
    def sessions_of(imports: list[list[dict]]) -> list[dict]:
        """One entry per imported session (an input may hold several studies)."""
        return [s for per_input in imports for s in per_input]

    sessions = sessions_of(imported.output)

    ready = XnatPrearchiveSensor.partial(
        task_id="wait_until_ready", project="{{ params.project }}", deferrable=True, quiet_period=QUIET,
        stall_timeout=1800, rebuild_stalled=True, poke_interval=POLL, timeout=6 * 3600,
    ).expand(study_uid=sessions.map(lambda s: s["study_uid"]))

    archived = XnatArchiveOperator.partial(task_id="archive", on_conflict="append").expand(
        prearchive_sessions=ready.output)

    @task
    def provenance(archived: list[list[dict]], sessions: list[dict]) -> list[dict]:
        """Custom fields recording where and when each archived session came from."""
        ctx = get_current_context()
        source = {s["label"]: s for s in sessions}
        out = []
        for result in (r for per_task in archived for r in per_task if r["status"] != "skipped"):
            origin = source.get(result["label"], {})
            out.append({"project": result["project"], "experiment": result["label"], "fields": {
                "source_file": Path(origin.get("source", "unknown")).name,
                "ingested_at": run_time(ctx),
                "ingest_run": ctx["run_id"],
                "study_uid": origin.get("study_uid", ""),
            }})
        return out

    fields = XnatSetFieldsOperator.partial(task_id="record_provenance").expand_kwargs(
        provenance(archived.output, sessions))

    @task(retries=0)
    def move_to_done(inputs: list[str], params: dict | None = None) -> list[str]:
        """Only now, with every session archived and recorded, does the input leave the landing folder."""
        landing = landing_path(params["landing"], params["landing_conn_id"])
        if not isinstance(landing, Path):  # object storage: each object copied under done/, then deleted
            fs, moved = landing.fs, []
            fs.makedirs((landing / "done").path, exist_ok=True)  # no-op on S3 or GCS; file:// has real folders
            for url in inputs:
                src = landing_path(url, params["landing_conn_id"])
                target = landing / "done" / src.name
                if fs.exists(target.path):
                    target = landing / "done" / f"{Path(src.name).stem}-{int(time.time())}{Path(src.name).suffix}"
                if fs.isdir(src.path):  # a folder on an object store: the objects under its prefix
                    for key in fs.find(src.path):
                        fs.makedirs(f"{target.path}{key[len(src.path):]}".rsplit("/", 1)[0], exist_ok=True)
                        fs.mv(key, target.path + key[len(src.path):])
                    if fs.exists(src.path):  # a store with real folders keeps the empty one
                        fs.rm(src.path, recursive=True)
                else:
                    fs.mv(src.path, target.path)
                moved.append(str(target))
            return moved
        done = landing / "done"
        done.mkdir(exist_ok=True)
        moved = []
        for src in map(Path, inputs):
            target = done / src.name
            if target.exists():
                target = done / f"{src.stem}-{int(time.time())}{src.suffix}"
            shutil.move(str(src), str(target))
            moved.append(str(target))
        return moved

    fields >> move_to_done(inputs)
