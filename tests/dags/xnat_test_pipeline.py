"""A test DAG exercising every operator and the deferrable sensors end to end, against ``xnat_default``.

Params: ``source`` (a DICOM folder or zip), ``project``, ``work`` (a scratch folder).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from xnat_provider.operators.archive import XnatArchiveOperator
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.operators.transfers import (
    XnatDownloadScanOperator,
    XnatListScansOperator,
    XnatUploadResourceOperator,
)
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor

with DAG(
    "xnat_test_pipeline",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    params={"source": Param("", type="string"), "project": Param("P1", type="string"),
            "work": Param("", type="string")},
    catchup=False,
) as dag:
    imported = XnatImportOperator(task_id="import", source="{{ params.source }}", project="{{ params.project }}")
    ready = XnatPrearchiveSensor(task_id="wait_ready", project="{{ params.project }}", deferrable=True,
                                 poke_interval=0.2, timeout=60, quiet_period=0.2)
    archived = XnatArchiveOperator(task_id="archive", prearchive_sessions=ready.output)
    archived_ok = XnatExperimentSensor(task_id="wait_archived", project="{{ params.project }}", experiment="S01_MR1",
                                    min_scans=2, deferrable=True, poke_interval=0.2, timeout=60)
    scans = XnatListScansOperator(task_id="list_scans", project="{{ params.project }}", experiment="S01_MR1")
    downloads = XnatDownloadScanOperator.partial(
        task_id="download", project="{{ params.project }}", experiment="S01_MR1", dest="{{ params.work }}/download",
    ).expand(scan=scans.output)

    @task
    def summarise(results: list[dict], params=None) -> str:
        import json
        from pathlib import Path

        out = Path(params["work"]) / "summary"
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(sorted(r["files"] for r in results)))
        return str(out)

    summary = summarise(downloads.output)
    uploaded = XnatUploadResourceOperator(task_id="upload", source=summary, project="{{ params.project }}",
                                          experiment="S01_MR1", resource="SUMMARY", format="JSON")
    fields = XnatSetFieldsOperator(task_id="fields", project="{{ params.project }}", experiment="S01_MR1",
                                   fields={"pipeline": "xnat_test_pipeline", "run": "{{ run_id }}"})
    imported >> ready >> archived >> archived_ok >> scans
    uploaded >> fields
