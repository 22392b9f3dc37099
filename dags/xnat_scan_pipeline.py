"""Per-scan processing of newly archived imaging sessions (XNAT experiments): download, summarise, upload the
results, tag the experiment.

Scheduled on the asset alias ``xnat_archived_sessions`` that :class:`XnatArchiveOperator` emits one event on
per archived experiment, so it runs after each ingest without polling. (Trigger it by hand with the ``project``
and ``experiment`` params to process one experiment; ``session`` is the old name of ``experiment``, still read.)

For each experiment: wait until it is archived with at least one scan (deferrable), list its scans, download
each scan in its own mapped task (verified against XNAT's MD5s, resumable), compute a summary with pydicom
and NumPy (slices, dimensions, spacing, intensity statistics, a small PNG preview of the middle slice),
upload the summary as a ``SUMMARY`` resource on the scan, and set fields on the experiment saying what ran.

Re-running is harmless: downloads skip files already verified on disk, the summary resource is replaced
(``overwrite="overwrite"``), and the fields are set to the same values.

Where the working data lives (the ``work`` param, default ``$XNAT_WORK``): a local folder when every task runs
on one machine (or the workers share a disk), else object storage that every worker reaches, because a
Celery worker that summarises a scan is not the one that downloaded it: ``s3://bucket/prefix`` with the
``work_conn_id`` param (default ``$XNAT_WORK_CONN_ID``, e.g. ``aws_default``; needs the Amazon provider),
``gs://...``, or ``file:///shared/...``. Downloads stream there verified, ``summarise`` reads the DICOM from
there and writes ``summary.json`` and ``preview.png`` there, and the upload streams them from there. The XComs
carry only strings (the URLs), never files.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, AssetAlias, ObjectStoragePath, Param, get_current_context, task

from xnat_provider.hooks.xnat import XnatHook
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.transfers import XnatDownloadScanOperator, XnatUploadResourceOperator
from xnat_provider.retry import xnat_retry_policy
from xnat_provider.runs import run_time
from xnat_provider.sensors.experiment import XnatExperimentSensor

PIPELINE_VERSION = "1.0"
POLL = float(os.environ.get("XNAT_EXAMPLE_POLL_SECONDS", "15"))  # seconds between polls (small in demos/tests)


def work_path(location: str, conn_id: str | None = None) -> Path | ObjectStoragePath:
    """A place of the working data: a local path, or object storage for a URL (``s3://bucket/prefix``; ``conn_id``
    is the Airflow connection its file system uses, None for the default credentials). Both offer ``/`` and
    ``open``, which is all the tasks below use on them (``ObjectStoragePath.open`` goes through the store Airflow
    attached for the connection)."""
    return ObjectStoragePath(location, conn_id=conn_id or None) if "://" in location else Path(location)


def write(path: Path | ObjectStoragePath, data: bytes) -> None:
    """Write a file, locally or on object storage (where folders need not be made: a key is a path)."""
    if isinstance(path, Path) or path.protocol in ("file", "local"):
        path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(data)


def png(image: list[list[int]]) -> bytes:
    """A grayscale 8-bit PNG from rows of 0-255 values (no imaging library needed)."""
    height, width = len(image), len(image[0])
    raw = b"".join(b"\x00" + bytes(row) for row in image)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


with DAG(
    "xnat_scan_pipeline",
    description="Download each scan of a newly archived experiment, summarise it, upload the summary",
    schedule=[AssetAlias("xnat_archived_sessions")],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": 2.0,
                  "retry_policy": xnat_retry_policy()},
    params={
        "project": Param("", type="string", description="with experiment: process this experiment by hand"),
        "experiment": Param("", type="string",
                            description="an experiment (imaging session) label, or several separated by commas"),
        "session": Param("", type="string", description="the old name of experiment (read when it is empty)"),
        "work": Param(os.environ.get("XNAT_WORK", "/tmp/xnat-scan-pipeline"), type="string",
                      description="a local folder, or object storage every worker reaches: s3://bucket/prefix, "
                                  "gs://..., file:///shared/..."),
        "work_conn_id": Param(os.environ.get("XNAT_WORK_CONN_ID", ""), type="string",
                              description="the Airflow connection of work's object storage (aws_default for "
                                          "s3://); empty: the default credentials"),
    },
    tags=["xnat", "example"],
) as dag:

    @task
    def sessions_to_process(params: dict | None = None) -> list[dict]:  # the task id stays: runs are kept by it
        """The experiments of this run: from the triggering asset events, else from the params."""
        ctx = get_current_context()
        found = []
        for stream in ctx["triggering_asset_events"].values():
            for event in stream:
                extra = event.extra or {}
                if extra.get("project") and extra.get("label"):
                    found.append({"project": extra["project"], "experiment": extra["label"]})
        labels = params["experiment"] or params["session"]
        if not found and params["project"] and labels:
            found += [{"project": params["project"], "experiment": label.strip()}
                      for label in labels.split(",") if label.strip()]
        if not found:
            print("No archived experiment in the triggering events and none given as params: nothing to do.")
        return [dict(t) for t in {tuple(sorted(d.items())) for d in found}]

    targets = sessions_to_process()

    archived = XnatExperimentSensor.partial(
        task_id="wait_for_session", min_scans=1, deferrable=True, poke_interval=POLL, timeout=3600,
    ).expand_kwargs(targets)

    @task
    def scan_jobs(targets: list[dict], params: dict | None = None) -> list[dict]:
        """One download job per scan, across every experiment of this run."""
        with XnatHook() as hook:
            client = hook.get_conn()
            return [{"project": t["project"], "experiment": t["experiment"], "scan": scan.id,
                     "dest": f"{params['work']}/{t['project']}/{t['experiment']}/download"}
                    for t in targets for scan in client.list_scans(t["project"], t["experiment"])]

    jobs = scan_jobs(targets)
    archived >> jobs

    downloads = XnatDownloadScanOperator.partial(
        task_id="download_scan", map_index_template="scan {{ task.scan }}",
        storage_conn_id="{{ params.work_conn_id }}",
    ).expand_kwargs(jobs)

    @task(map_index_template="scan {{ download['scans'][0] }}")
    def summarise(download: dict, params: dict | None = None) -> dict:
        """Slices, dimensions, spacing, intensity statistics and a PNG preview, from the scan's DICOM files."""
        import numpy as np
        import pydicom

        scan, conn_id = download["scans"][0], params["work_conn_id"]
        # The files the download verified, from its manifest (the same on local disk and object storage).
        with work_path(download["manifest"], conn_id).open("rb") as f:
            files = [entry["path"] for entry in json.load(f)["files"]]
        datasets = []
        for name in sorted(files):
            with work_path(name, conn_id).open("rb") as f:  # pydicom reads from a binary file object
                datasets.append(pydicom.dcmread(f))
        datasets.sort(key=lambda d: int(getattr(d, "InstanceNumber", 0) or 0))
        if not datasets:
            raise ValueError(f"No DICOM files downloaded for scan {scan}")
        volume = np.stack([d.pixel_array.astype(np.float64) for d in datasets])
        first = datasets[0]
        summary = {
            "project": download["project"], "experiment": download["experiment"], "scan": scan,
            "series_description": str(first.get("SeriesDescription", "")), "modality": str(first.get("Modality", "")),
            "slices": len(datasets), "rows": int(first.Rows), "columns": int(first.Columns),
            "pixel_spacing": [float(v) for v in first.get("PixelSpacing", [])],
            "intensity": {"min": float(volume.min()), "max": float(volume.max()), "mean": float(volume.mean()),
                          "std": float(volume.std()), "p50": float(np.percentile(volume, 50))},
            "pipeline_version": PIPELINE_VERSION,
        }
        middle = volume[len(datasets) // 2]
        lo, hi = float(middle.min()), float(middle.max())
        scaled = np.zeros_like(middle) if hi <= lo else (middle - lo) / (hi - lo) * 255
        step = max(1, max(middle.shape) // 128)
        out = work_path(params["work"], conn_id) / download["project"] / download["experiment"] / "summary" / scan
        write(out / "preview.png", png(scaled[::step, ::step].round().astype(np.uint8).tolist()))
        write(out / "summary.json", json.dumps(summary, indent=1).encode())
        return {"source": str(out), "project": download["project"], "experiment": download["experiment"], "scan": scan,
                "slices": summary["slices"], "mean": summary["intensity"]["mean"]}

    summaries = summarise.expand(download=downloads.output)

    uploaded = XnatUploadResourceOperator.partial(
        task_id="upload_summary", resource="SUMMARY", format="JSON", content="scan summary", overwrite="overwrite",
        storage_conn_id="{{ params.work_conn_id }}",
    ).expand_kwargs(summaries.map(lambda s: {"source": s["source"], "project": s["project"],
                                             "experiment": s["experiment"], "scan": s["scan"]}))

    @task
    def session_fields(summaries: list[dict]) -> list[dict]:  # the task id stays: runs are kept by it
        """The fields to set on each experiment: how many scans were summarised, by what, when."""
        by_experiment: dict[tuple[str, str], list[dict]] = {}
        for s in summaries:
            by_experiment.setdefault((s["project"], s["experiment"]), []).append(s)
        ctx = get_current_context()
        return [{"project": p, "experiment": e, "fields": {
            "scans_summarised": str(len(items)), "summary_pipeline": f"xnat_scan_pipeline {PIPELINE_VERSION}",
            "summarised_at": run_time(ctx)}} for (p, e), items in sorted(by_experiment.items())]

    fields = session_fields(summaries)
    uploaded >> fields
    XnatSetFieldsOperator.partial(task_id="set_session_fields").expand_kwargs(fields)
