"""A poke-mode sensor that times out: ``soft_fail`` makes it skipped, without it the task fails."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from xnat_provider.sensors.prearchive import XnatPrearchiveSensor

with DAG("xnat_test_sensors_timeout", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
         catchup=False) as dag:
    XnatPrearchiveSensor(task_id="soft", project="P1", experiment="NEVER", poke_interval=0.1, timeout=0.5,
                         soft_fail=True, deferrable=False)
    XnatPrearchiveSensor(task_id="hard", project="P1", experiment="NEVER", poke_interval=0.1, timeout=0.5,
                         deferrable=False, retries=0)
