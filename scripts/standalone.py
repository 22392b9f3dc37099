"""``make standalone``: ``airflow standalone`` beside the XNAT emulator, to watch the provider in the UI.

Starts the emulator on ``demo-data/xnat`` (project DEMO, admin/admin), points ``xnat_default`` at it, seeds
the landing folder, and runs Airflow's API server, scheduler, triggerer and DAG processor on SQLite with the
example DAGs. Open http://127.0.0.1:8080 (Airflow prints the admin password). Things to watch:
- ``xnat_scheduled_ingest``: trigger it; its ``wait_until_ready`` tasks defer (the triggerer holds the wait,
  no worker slot);
- ``xnat_prearchive_autoarchive``: starts by itself when the watcher sees a new READY session; drop another
  study in with ``xnat-emulator``'s REST API or run the ingest's import only;
- ``xnat_scan_pipeline``: starts by itself on the archive's asset events.
Stop with Ctrl-C. Not part of CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import demo


def main() -> int:
    demo.DATA.mkdir(parents=True, exist_ok=True)
    emulator, url = demo.start_emulator()
    demo.log(f"XNAT emulator on {url} (data in {demo.DATA / 'xnat'})")
    try:
        demo.seed_landing(demo.DATA / "landing")
        env = demo.airflow_env(url)
        env.update(AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__PORT="8080",
                   AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:8080/execution/",
                   AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False")
        demo.log("airflow standalone: UI on http://127.0.0.1:8080 (Ctrl-C to stop)")
        proc = subprocess.Popen([str(demo.BIN / "airflow"), "standalone"], env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait(30)
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(10)


if __name__ == "__main__":
    sys.exit(main())
