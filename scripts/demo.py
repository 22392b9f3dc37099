"""``make demo``: the example pipeline, end to end, on this machine, with an XNAT emulator standing in for XNAT.

1. starts the XNAT emulator (``xnat-emulator``) on ``demo-data/xnat``;
2. seeds the landing folder ``demo-data/landing`` with real DICOM (two zips and a folder; three sessions);
3. runs ``xnat_scheduled_ingest`` with ``airflow dags test`` on Airflow's embedded SQLite database: import to
   the prearchive, wait (deferrable sensor), archive, record provenance fields, move inputs to ``done/``;
4. runs ``xnat_scan_pipeline`` for the archived sessions (in a deployment the archive's asset events start it):
   download each scan, summarise it with pydicom and NumPy, upload the summary, set fields on the session;
5. prints what happened and where the data is, stops the emulator and exits 0.

Run it again and it works again: the same studies are re-sent, and the ingest merges them into the same
sessions instead of creating copies.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DEMO_DATA", REPO / "demo-data")).resolve()
BIN = Path(sys.executable).parent
PROJECT = "DEMO"


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def start_emulator(own_group: bool = False) -> tuple[subprocess.Popen, str]:
    """The emulator, and its URL; ``own_group`` puts it in a process group of its own (a terminal's Ctrl-C does
    not reach it: whoever started it stops it)."""
    proc = subprocess.Popen(
        [str(BIN / "xnat-emulator"), "--port", "0", "--data-dir", str(DATA / "xnat"), "--user", "admin:admin",
         "--project", PROJECT, "--receiving-idle", "2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        process_group=0 if own_group else None)
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not line.startswith("XNAT emulator listening on "):
        proc.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def seed_landing(landing: Path) -> None:
    from xnat_provider.testing.samples import make_study, zip_files

    landing.mkdir(parents=True, exist_ok=True)
    staging = DATA / "staging"
    studies = [("SUBJ101", "SUBJ101_MR1", "MR", ((1, "T1w"), (2, "T2w"), (3, "FLAIR"))),
               ("SUBJ102", "SUBJ102_MR1", "MR", ((1, "T1w"), (4, "DWI"))),
               ("SUBJ103", "SUBJ103_CT1", "CT", ((2, "Abdomen"),))]
    for i, (subject, session, modality, series) in enumerate(studies):
        study = make_study(staging / session, patient_name=subject, patient_id=session, modality=modality,
                           series=series, instances=6, uid_seed=session)
        if i < 2:
            zip_files(study.files, landing / f"{session}.zip")
        else:
            target = landing / session
            target.mkdir(exist_ok=True)
            for f in study.files:
                (target / f.name).write_bytes(f.read_bytes())
        log(f"landing: {session} ({len(study.files)} DICOM files, {len(series)} series, {modality})")


def airflow_env(url: str) -> dict[str, str]:
    home = DATA / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    key_file = home / "fernet.key"
    if not key_file.exists():
        key_file.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__FERNET_KEY=key_file.read_text(),
        # The example DAGs run by themselves in this home (make standalone: the event-driven ones start on their
        # events), so they are created unpaused, also when `make demo` creates them first.
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW_CONN_XNAT_DEFAULT=json.dumps({"conn_type": "xnat", "host": url, "login": "admin",
                                              "password": "admin"}),
        XNAT_PROJECT=PROJECT, XNAT_LANDING=str(DATA / "landing"), XNAT_WORK=str(DATA / "work"),
        XNAT_EXAMPLE_POLL_SECONDS="1", XNAT_EXAMPLE_QUIET_SECONDS="1", PATH=f"{BIN}:{os.environ.get('PATH', '')}",
    )
    return env


def airflow(env: dict[str, str], *args: str, log_name: str) -> float:
    started = time.monotonic()
    out = DATA / "logs" / f"{log_name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        code = subprocess.run([str(BIN / "airflow"), *args], env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    took = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"`airflow {' '.join(args[:3])}` failed (exit {code}); its output is in {out}")
    return took


def main() -> int:
    started = time.monotonic()
    DATA.mkdir(parents=True, exist_ok=True)
    emulator, url = start_emulator()
    log(f"XNAT emulator on {url}, data in {DATA / 'xnat'}")
    try:
        seed_landing(DATA / "landing")
        env = airflow_env(url)
        log("preparing Airflow's SQLite database (airflow db migrate)")
        airflow(env, "db", "migrate", log_name="db-migrate")
        conf = {"landing": str(DATA / "landing"), "project": PROJECT, "quiet_seconds": 0}
        log("airflow dags test xnat_scheduled_ingest ...")
        t_ingest = airflow(env, "dags", "test", "xnat_scheduled_ingest", "-c", json.dumps(conf),
                           log_name="xnat_scheduled_ingest")
        from xnat_provider.client import XnatClient

        with XnatClient(url, "admin", "admin") as xnat:
            sessions = [e.label for e in xnat.list_experiments(PROJECT)]
        log(f"airflow dags test xnat_scan_pipeline for {', '.join(sessions)} ...")
        t_scans = airflow(env, "dags", "test", "xnat_scan_pipeline", "-c",
                          json.dumps({"project": PROJECT, "experiment": ",".join(sessions),
                                      "work": str(DATA / "work")}),
                          log_name="xnat_scan_pipeline")
        report(url, t_ingest, t_scans, time.monotonic() - started)
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(10)
    return 0


def report(url: str, t_ingest: float, t_scans: float, total: float) -> None:
    from xnat_provider.client import XnatClient

    print()
    print(f"{'session':<14} {'subject':<9} {'type':<20} {'scans':>5} {'files':>5} {'summaries':>9}  fields set")
    with XnatClient(url, "admin", "admin") as xnat:
        for exp in xnat.list_experiments(PROJECT):
            scans = xnat.list_scans(PROJECT, exp)
            files = summaries = 0
            for s in scans:
                scan_path = xnat.object_path(PROJECT, experiment=exp, scan=s.id)
                files += len(xnat.list_files(f"{scan_path}/resources/DICOM"))
                summaries += any(r["label"] == "SUMMARY" for r in xnat.list_resources(scan_path))
            fields = xnat.get_fields(PROJECT, experiment=exp.label)
            print(f"{exp.label:<14} {exp.subject_label:<9} {exp.xsi_type:<20} {len(scans):>5} {files:>5} "
                  f"{summaries:>9}  {', '.join(sorted(fields))}")
        left = xnat.list_prearchive(PROJECT)
    done = sorted(p.name for p in (DATA / "landing" / "done").iterdir())
    print()
    print(f"prearchive left: {len(left)} session(s); inputs moved to landing/done: {len(done)}")
    print(f"time: ingest DAG {t_ingest:.0f} s, scan pipeline DAG {t_scans:.0f} s, whole demo {total:.0f} s")
    print(f"data: XNAT emulator {DATA / 'xnat'}, landing {DATA / 'landing'}, results {DATA / 'work'}, "
          f"Airflow logs {DATA / 'logs'}")


if __name__ == "__main__":
    sys.exit(main())
