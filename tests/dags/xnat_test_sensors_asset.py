"""A DAG started by new READY prearchive sessions: an Asset watched by ``XnatPrearchiveEventTrigger``."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, task

from xnat_provider.triggers.events import XnatPrearchiveEventTrigger

new_sessions = Asset("xnat_test_P1_prearchive", watchers=[AssetWatcher(
    name="xnat_test_P1_ready", trigger=XnatPrearchiveEventTrigger(project="P1", poll_interval=30.0))])

with DAG("xnat_test_sensors_asset", schedule=[new_sessions], start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
         catchup=False) as dag:

    @task
    def announce(triggering_asset_events=None) -> list:
        return [e.extra.get("payload") for events in (triggering_asset_events or {}).values() for e in events]

    announce()
