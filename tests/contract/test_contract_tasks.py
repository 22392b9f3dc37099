"""The operators' and sensors' contract: a pipeline a lab would write, task by task, through an ``xnat``
connection, each task executed as Airflow executes it and fed the previous task's XCom."""

from __future__ import annotations

import json
from pathlib import Path

from tests.contract.support import RUN_ID, ContractServer, Scratch, instances, md5, run_task, wait_until
from xnat_provider.client import base_path
from xnat_provider.links import XCOM_KEY
from xnat_provider.operators.archive import ARCHIVED_ALIAS, XnatArchiveOperator
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.operators.transfers import XnatDownloadScanOperator, XnatUploadResourceOperator
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor


def test_pipeline_from_import_to_custom_fields_task_by_task(server: ContractServer, scratch: Scratch,
                                                            xnat_conn_id: str, tmp_path: Path) -> None:
    project = server.project
    study = scratch.new_study(tmp_path / "landing")
    subject, label = study.subject, study.session
    poke = {"mode": "poke", "deferrable": False, "poke_interval": 5.0 if server.live else 0.2,
            "timeout": server.timeout, "xnat_conn_id": xnat_conn_id}

    imported, _ = run_task(XnatImportOperator(task_id="import", source=str(study.folder), project=project,
                                              subject=subject, experiment=label, xnat_conn_id=xnat_conn_id))
    assert [(r["project"], r["subject"], r["label"], r["in_prearchive"]) for r in imported] == [
        (project, subject, label, True)]

    ready, _ = run_task(XnatPrearchiveSensor(task_id="ready", project=project, study_uid=study.study_uid, **poke))
    assert [(s["name"], s["subject"], s["study_uid"], s["status"]) for s in ready] == [
        (label, subject, study.study_uid, "READY")]

    archived, ctx = run_task(XnatArchiveOperator(task_id="archive", prearchive_sessions=ready,
                                                 xnat_conn_id=xnat_conn_id))
    assert [(a["project"], a["subject"], a["label"], a["status"]) for a in archived] == [
        (project, subject, label, "archived")]
    experiment_id = archived[0]["id"]
    events = [(asset.uri, extra) for alias, got in ctx["outlet_events"].items() if alias.name == ARCHIVED_ALIAS
              for asset, extra in got.added]
    assert len(events) == 1 and events[0][0].endswith(f"/{project}/{subject}/{label}")
    assert events[0][1]["experiment_id"] == experiment_id  # a downstream DAG scheduled on the alias gets the ID
    assert ctx["ti"].pushed[XCOM_KEY].endswith(f"/data/projects/{project}/experiments/{label}?format=html")
    wait_until(lambda: not scratch.prearchive(), server.timeout, "the archived row to leave the prearchive")

    experiment, _ = run_task(XnatExperimentSensor(task_id="archived", project=project, experiment=label, min_scans=2,
                                                  **poke))
    assert (experiment["id"], experiment["label"], experiment["project"]) == (experiment_id, label, project)

    dest = tmp_path / "work" / "download"
    summary, _ = run_task(XnatDownloadScanOperator(task_id="download", project=project, experiment=label,
                                                   dest=str(dest), scans="ALL", xnat_conn_id=xnat_conn_id))
    assert (summary["files"], summary["transferred"], summary["skipped"]) == (len(study.files), len(study.files), 0)
    manifest = json.loads(Path(summary["manifest"]).read_text())
    for entry in manifest["files"]:
        on_disk = Path(entry["path"])
        assert (entry["size"], entry["md5"]) == (on_disk.stat().st_size, md5(on_disk))
    assert instances(Path(e["path"]) for e in manifest["files"]) == instances(study.files)

    results = tmp_path / "work" / "results"
    results.mkdir(parents=True)
    (results / "summary.json").write_text(json.dumps({"run": RUN_ID, "files": summary["files"]}))
    uploaded, _ = run_task(XnatUploadResourceOperator(task_id="upload", source=str(results), project=project,
                                                      experiment=label, resource="CONTRACT_RESULTS", format="JSON",
                                                      xnat_conn_id=xnat_conn_id))
    assert (uploaded["level"], uploaded["files"], uploaded["transferred"]) == ("experiment", 1, 1)
    stored_file = results / "summary.json"
    assert scratch.catalog(base_path(project, experiment=label), "CONTRACT_RESULTS") == {
        "summary.json": (stored_file.stat().st_size, md5(stored_file))}

    fields = {"contract_run": RUN_ID, "contract_files": str(summary["files"])}
    stored, _ = run_task(XnatSetFieldsOperator(task_id="fields", project=project, experiment=label, fields=fields,
                                               xnat_conn_id=xnat_conn_id))
    assert stored == fields

    # What the pipeline left is what a downstream sensor waiting on it sees at once.
    done, _ = run_task(XnatExperimentSensor(task_id="qc_done", project=project, experiment=label,
                                         resource="CONTRACT_RESULTS", field_name="contract_run", field_value=RUN_ID,
                                         **poke))
    assert done["id"] == experiment_id
