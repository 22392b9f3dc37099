"""Fixtures shared by the example-DAG tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.airflow_helpers import forget_asset_events, set_paused, sync_dags
from xnat_provider.testing.samples import make_study, zip_files


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    """A landing folder with a zip (two series) and a folder (one series) of real DICOM."""
    landing = tmp_path / "landing"
    landing.mkdir()
    a = make_study(tmp_path / "a", patient_name="SUBJ001", patient_id="SUBJ001_MR1", uid_seed="a")
    zip_files(a.files, landing / "subj001.zip")
    make_study(landing / "subj002", patient_name="SUBJ002", patient_id="SUBJ002_MR1", series=((5, "FLAIR"),),
               uid_seed="b")
    return landing


@pytest.fixture
def unpaused(airflow_db: Path) -> Iterator[Callable[..., None]]:
    """``unpaused(dag_id, ...)`` unpauses DAGs for one test, as a deployment runs them (asset events queue only
    unpaused DAGs, and only their watchers get triggers), and pauses them again afterwards. The test starts with
    no asset events recorded by earlier tests for the example DAGs' alias and watched assets."""
    done: list[str] = []

    def unpause(*dag_ids: str) -> None:
        sync_dags()
        for dag_id in dag_ids:
            set_paused(dag_id, False)
            done.append(dag_id)
        sync_dags()  # creates the watcher triggers of the DAGs now unpaused

    forget_asset_events(alias="xnat_archived_sessions")
    forget_asset_events(uri_prefix="xnat://prearchive/")
    yield unpause
    for dag_id in done:
        set_paused(dag_id, True)
