"""Both sensors in a real ``dag.test()``: the prearchive sensor in reschedule mode (its observations kept in
the task state store between pokes) and deferrable with a stalled session rebuilt through its trigger, and
the experiment sensor deferrable. Params: ``project``, ``experiment`` (the prearchive session label)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor

with DAG(
    "xnat_test_sensors_modes",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    params={"project": Param("P1", type="string"), "experiment": Param("S01_MR1", type="string"),
            "archived": Param("S02_MR1", type="string")},
    catchup=False,
) as dag:
    rescheduled = XnatPrearchiveSensor(task_id="rescheduled", project="{{ params.project }}",
                                       experiment="{{ params.experiment }}", mode="reschedule", deferrable=False,
                                       quiet_period=1.0, poke_interval=0.5, timeout=30)
    deferred = XnatPrearchiveSensor(task_id="deferred", project="{{ params.project }}",
                                    experiment="{{ params.experiment }}", deferrable=True, stall_timeout=0.5,
                                    rebuild_stalled=True, poke_interval=0.1, timeout=30)
    archived = XnatExperimentSensor(task_id="archived", project="{{ params.project }}",
                                 experiment="{{ params.archived }}", min_scans=2, resource="DICOM", deferrable=True,
                                 poke_interval=0.1, timeout=30)
