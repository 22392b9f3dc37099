"""``make test-distributed``: the example DAGs under CeleryExecutor, as ``docker/docker-compose.yaml`` deploys them.

Starts a private PostgreSQL (metadata database and Celery result backend) and Redis (broker), the XNAT emulator,
and Airflow's API server, scheduler, DAG processor, triggerer and two Celery workers, each a separate process
with the compose file's settings (``deployment.py``). Then, only through Airflow's REST API, as an operator of
the deployment would:

1. unpauses ``xnat_scan_pipeline`` and ``xnat_scheduled_ingest``, whose scheduled run imports the studies in
   the landing folder; checks that its prearchive sensors were deferred (the triggerer held the wait, no
   worker slot) and resumed;
2. waits for ``xnat_scan_pipeline``, started by the archive's asset events, and checks that its tasks (and the
   ingest's) ran on both workers;
3. unpauses ``xnat_prearchive_autoarchive``, sends a new study to the prearchive, and checks that the
   triggerer's watcher started a run that archived it;
4. checks XNAT's state through the client, and that the XNAT password is in no task log.

Workers share no disk but Airflow's logs folder (the compose file's ``airflow-logs`` volume): the pipeline's
data passes through object storage (``XNAT_WORK``, a ``file://`` URL here; ``s3://`` and the like in a real
deployment). Everything started is stopped by PID however the run ends. Prints the timings and how the tasks
spread over the workers, and writes them to ``benchmarks/results/distributed.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import standalone  # noqa: E402  (scripts/: the supervisor that stops process groups and marked strays)

from tests.distributed import deployment, services  # noqa: E402
from tests.distributed.airflow_api import AirflowApi  # noqa: E402
from tests.distributed.services import log  # noqa: E402

BIN = Path(sys.executable).parent
INGEST, PIPELINE, AUTOARCHIVE = "xnat_scheduled_ingest", "xnat_scan_pipeline", "xnat_prearchive_autoarchive"
PROJECT = "P1"
RESULTS = REPO / "benchmarks" / "results" / "distributed.json"


class Supervisor(standalone.Supervisor):
    """``make standalone``'s supervisor, giving every component 30 s to stop after SIGTERM (the last started
    first: workers finish, then the scheduler, the API server, and at last Redis and PostgreSQL)."""

    def stop_all(self) -> bool:
        self.stopping = True
        clean = True
        for name, proc in reversed(self.children):
            clean &= self.stop(name, proc, signal.SIGTERM, 30.0)
        return self.sweep() and clean


class Deployment:
    """The running processes and what the checks need to reach them."""

    def __init__(self, folder: Path, supervisor: Supervisor) -> None:
        self.folder, self.sup = folder, supervisor
        self.xnat_password = "xnat-" + secrets.token_hex(12)
        self.admin_password = secrets.token_urlsafe(12)
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()

    def mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self.started, 1)
        log(f"{what}: {self.timings[what]:.0f} s")

    def settings(self) -> dict[str, str]:
        """docker/.env as a user would fill it in for this machine."""
        return {
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(48),
            "_AIRFLOW_WWW_USER_PASSWORD": self.admin_password,
            "XNAT_URL": self.xnat_url, "XNAT_LOGIN": "admin", "XNAT_PASSWORD": self.xnat_password,
            "XNAT_PROJECT": PROJECT, "XNAT_LANDING": self.landing, "XNAT_WORK": self.work,
        }

    def start(self) -> None:
        services.ensure_installed()
        with self.sup.signals_held():  # recorded as soon as started, so they are stopped (last) whatever happens
            pg = services.start_postgres(self.folder / "postgres", "airflow", "airflow", "airflow")
            self.sup.add("postgres", pg.proc)
            redis = services.start_redis(self.folder / "redis")
            self.sup.add("redis", redis.proc)
        self.mark("postgres and redis up")
        emulator_port = services.free_port()
        self.xnat_url = f"http://127.0.0.1:{emulator_port}"
        # The landing folder and the work area as object-storage URLs, as workers on several hosts need them
        # (s3://... there; file:// here, the one store every process on this machine reaches).
        self.landing = (self.folder / "object-store" / "landing").as_uri()
        self.work = (self.folder / "object-store" / "work").as_uri()
        settings = self.settings_ = self.settings()
        self.start_emulator(settings, emulator_port)
        self.api_port = services.free_port()
        self.endpoints = deployment.Endpoints(pg.port, redis.port, self.api_port)
        self.env = self.component_env("airflow-init")
        self.airflow_init(settings)
        self.api = AirflowApi(f"http://127.0.0.1:{self.api_port}", "airflow", self.admin_password)
        self.start_component("airflow-apiserver", settings)
        self.wait_healthy()
        for service in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
            self.start_component(service, settings)
        for n in (1, 2):
            self.start_component("airflow-worker", settings, worker=f"worker-{n}")
        self.mark("airflow started")

    def start_emulator(self, settings: dict[str, str], port: int) -> None:
        argv = deployment.emulator_command(settings)
        argv[argv.index("--host") + 1] = "127.0.0.1"
        argv[argv.index("--port") + 1] = str(port)
        argv[argv.index("--data-dir") + 1] = str(self.folder / "xnat")
        argv += ["--receiving-idle", "2"]
        out = open(self.folder / "xnat-emulator.log", "w")
        with self.sup.signals_held():
            self.sup.add("xnat-emulator", subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=out,
                                                           stderr=subprocess.STDOUT, process_group=0))
        services.wait_port(port, "xnat-emulator", self.sup.children[-1][1])

    def airflow_init(self, settings: dict[str, str]) -> None:
        """What airflow-init does through the image's entrypoint: migrate the database, create the admin user."""
        user = deployment.init_env(settings)
        for args in (["db", "migrate"],
                     # --password=VALUE: a random password may start with "-" (1 in 64), which argparse
                     # would take for an option ("expected one argument"; it failed a CI run so)
                     ["users", "create", "--username", user["_AIRFLOW_WWW_USER_USERNAME"],
                      f"--password={user['_AIRFLOW_WWW_USER_PASSWORD']}", "--role", "Admin",
                      "--email", "airflow@example.org", "--firstname", "Airflow", "--lastname", "Admin"]):
            done = subprocess.run([str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"airflow {' '.join(args[:2])} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        self.mark("database migrated, admin user created")

    def start_component(self, service: str, settings: dict[str, str], worker: str | None = None) -> None:
        argv = deployment.service_command(settings, service)
        name = worker or service
        env = self.component_env(name, worker=bool(worker))
        if worker:
            argv += ["--celery-hostname", f"{worker}@%h"]
        out = open(self.folder / f"{name}.log", "w")
        self.sup.start(name, [str(BIN / "airflow"), *argv], env=env, stdout=out, stderr=subprocess.STDOUT)

    def component_env(self, name: str, worker: bool = False) -> dict[str, str]:
        env = deployment.component_env(self.settings_, self.endpoints, self.folder, name, worker, services.free_port)
        Path(env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
        return {**os.environ, **env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.api.healthy():
            self.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"the API server was not healthy within {timeout:.0f} s")
            time.sleep(1)
        self.api.login()

    def check_alive(self) -> None:
        for name, proc in self.sup.children:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; its output: {self.folder / name}.log")

    def stop(self) -> bool:
        return self.sup.stop_all()


def seed_landing(landing: Path) -> list[str]:
    """Three studies in the landing folder, aged past the ingest's quiet period; their session labels."""
    from xnat_provider.testing.samples import make_study, zip_files

    staging = landing.parent / "staging"
    studies = [("DIST01", "DIST01_MR1", "MR", ((1, "T1w"), (2, "T2w"), (3, "FLAIR"))),
               ("DIST02", "DIST02_MR1", "MR", ((1, "T1w"), (4, "DWI"))),
               ("DIST03", "DIST03_CT1", "CT", ((2, "Abdomen"),))]
    landing.mkdir(parents=True, exist_ok=True)
    for subject, session, modality, series in studies:
        study = make_study(staging / session, patient_name=subject, patient_id=session, modality=modality,
                           series=series, instances=4, uid_seed=session)
        zip_files(study.files, landing / f"{session}.zip")
        old = time.time() - 3600
        os.utime(landing / f"{session}.zip", (old, old))
    return [s[1] for s in studies]


def wait_run(d: Deployment, dag_id: str, timeout: float, after: int = 0, watch: Any = None) -> dict:
    """The first run of ``dag_id`` beyond the first ``after`` runs, once it has ended; ``watch(ti)`` sees every
    task instance on every poll (to catch states that pass, such as ``deferred``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.check_alive()
        runs = d.api.runs(dag_id)[after:]
        if runs:
            run = runs[0]
            if watch:
                for ti in d.api.task_instances(dag_id, run["dag_run_id"]):
                    watch(ti)
            if run["state"] in ("success", "failed"):
                if run["state"] == "failed":
                    raise SystemExit(f"{dag_id} run {run['dag_run_id']} failed; logs in {d.folder}")
                return run
        time.sleep(0.5)
    raise SystemExit(f"no finished {dag_id} run within {timeout:.0f} s; logs in {d.folder}")


def scenario(d: Deployment) -> dict[str, Any]:
    from xnat_provider.client import XnatClient

    labels = seed_landing(d.folder / "object-store" / "landing")
    for dag_id in (INGEST, PIPELINE, AUTOARCHIVE):
        d.api.wait_for_dag(dag_id, timeout=180)
    d.mark("example DAGs parsed")
    d.api.unpause(PIPELINE)
    d.api.unpause(INGEST)  # catchup=False: the scheduler starts the latest hourly run at once
    sensor_states: dict[int, set[str]] = {}

    def watch_sensor(ti: dict) -> None:
        if ti["task_id"] == "wait_until_ready" and ti["map_index"] >= 0:  # -1: before the expansion
            sensor_states.setdefault(ti["map_index"], set()).add(ti["state"])

    ingest = wait_run(d, INGEST, timeout=300, watch=watch_sensor)
    d.mark("ingest run succeeded")
    ingest_tis = d.api.task_instances(INGEST, ingest["dag_run_id"])
    sensors = [ti for ti in ingest_tis if ti["task_id"] == "wait_until_ready"]
    assert len(sensors) == len(labels), f"expected {len(labels)} sensors, got {len(sensors)}"
    never_deferred = [i for i, seen in sensor_states.items() if "deferred" not in seen]
    assert sensor_states and not never_deferred, f"sensors never seen deferred: {never_deferred} {sensor_states}"
    for ti in sensors:  # resumed by the triggerer's event: the try that deferred is the one that succeeded
        assert ti["state"] == "success" and ti["try_number"] == 1, ti
        text = d.api.log(ti, 1)
        deferred = text.find("Pausing task as DEFERRED")
        assert 0 <= deferred < text.rfind("Pre Execute") < text.rfind("READY"), f"not deferred, then resumed: {text}"

    pipeline_runs = wait_pipeline(d, labels)
    d.mark("scan pipeline runs succeeded")
    with XnatClient(d.xnat_url, "admin", d.xnat_password) as xnat:
        prearchive_label = autoarchive(d, xnat)
        d.mark("autoarchive run succeeded")
        check_xnat(xnat, labels, prearchive_label)
    runs = [(INGEST, ingest), *[(PIPELINE, r) for r in pipeline_runs]]
    runs += [(AUTOARCHIVE, r) for r in d.api.runs(AUTOARCHIVE)]
    spread, logs = check_workers_and_logs(d, runs)
    d.mark("checks done")
    return {"spread": spread, "task_logs_checked": logs, "sensor_states_seen": {str(k): sorted(v) for k, v in
                                                                               sensor_states.items()}}


def wait_pipeline(d: Deployment, labels: list[str], timeout: float = 300) -> list[dict]:
    """The scan pipeline's asset-triggered runs until every ingested session was processed by one that
    succeeded (the archive's events may arrive in one run or several)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.check_alive()
        runs = d.api.runs(PIPELINE)
        failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
        if failed:
            raise SystemExit(f"{PIPELINE} runs failed: {failed}; logs in {d.folder}")
        done = [r for r in runs if r["state"] == "success"]
        covered = set()
        for run in done:
            assert run["run_type"] == "asset_triggered", run
            for ti in d.api.task_instances(PIPELINE, run["dag_run_id"]):
                if ti["task_id"] == "set_session_fields" and ti["state"] == "success":
                    covered |= {label for label in labels if label in json.dumps(ti.get("rendered_fields"))}
        if covered == set(labels) and all(r["state"] == "success" for r in runs):
            return done
        time.sleep(1)
    raise SystemExit(f"{PIPELINE} did not process {labels} within {timeout:.0f} s; logs in {d.folder}")


def autoarchive(d: Deployment, xnat: Any) -> str:
    """A new study sent to the prearchive starts the event-driven DAG, which archives it."""
    from xnat_provider.testing.samples import make_study

    before = len(d.api.runs(AUTOARCHIVE))
    d.api.unpause(AUTOARCHIVE)
    study = make_study(d.folder / "staging" / "DIST04_MR1", patient_name="DIST04", patient_id="DIST04_MR1",
                       modality="MR", series=((1, "T1w"),), instances=3, uid_seed="DIST04_MR1")
    xnat.import_dicom(study.files[0].parent, PROJECT, destination="prearchive")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        d.check_alive()
        if any(e.label == "DIST04_MR1" for e in xnat.list_experiments(PROJECT)):
            runs = d.api.runs(AUTOARCHIVE)[before:]
            if runs and all(r["state"] in ("success", "failed") for r in runs):
                assert all(r["state"] == "success" and r["run_type"] == "asset_triggered" for r in runs), runs
                return "DIST04_MR1"
        time.sleep(1)
    raise SystemExit(f"{AUTOARCHIVE} did not archive DIST04_MR1 within 240 s; logs in {d.folder}")


def check_xnat(xnat: Any, labels: list[str], extra: str) -> None:
    archived = {e.label: e for e in xnat.list_experiments(PROJECT)}
    assert set(labels) | {extra} <= set(archived), f"archived: {sorted(archived)}"
    assert not xnat.list_prearchive(PROJECT), "sessions left in the prearchive"
    for label in labels:
        fields = xnat.get_fields(PROJECT, experiment=label)
        assert {"source_file", "ingest_run", "scans_summarised"} <= set(fields), (label, fields)
        for scan in xnat.list_scans(PROJECT, archived[label]):
            path = xnat.object_path(PROJECT, experiment=archived[label], scan=scan.id)
            assert any(r["label"] == "SUMMARY" for r in xnat.list_resources(path)), (label, scan.id)


def check_workers_and_logs(d: Deployment, runs: list[tuple[str, dict]]) -> tuple[dict, int]:
    """Which worker ran each task (its reported hostname), that the ingest and the scan pipeline each used both
    (their mapped tasks, runnable together, cannot share a worker's one slot), and that no try's log holds the
    XNAT password."""
    by_worker: Counter[str] = Counter()
    by_dag: dict[str, Counter[str]] = {INGEST: Counter(), PIPELINE: Counter()}
    downloads: Counter[str] = Counter()
    checked, logged_in = 0, 0
    for dag_id, run in runs:
        for ti in d.api.task_instances(dag_id, run["dag_run_id"]):
            if ti["state"] in (None, "skipped", "upstream_failed", "removed"):
                continue
            by_worker[ti["hostname"] or "?"] += 1
            if dag_id in by_dag:
                by_dag[dag_id][ti["hostname"] or "?"] += 1
            if ti["task_id"] == "download_scan":
                downloads[ti["hostname"]] += 1
            for attempt in range(1, (ti["try_number"] or 0) + 1):
                text = d.api.log(ti, attempt)
                assert d.xnat_password not in text, f"the XNAT password is in {ti['task_id']} try {attempt}'s log"
                checked += 1
                logged_in += "Logged in to XNAT" in text
    assert logged_in >= 10, f"only {logged_in} task logs show an XNAT login: the logs read are not the tasks' logs"
    for dag_id, hosts in by_dag.items():
        assert set(hosts) == {"worker-1", "worker-2"}, f"{dag_id}'s tasks by worker: {dict(hosts)}"
    return {"tasks_by_worker": dict(by_worker), "by_dag": {k: dict(v) for k, v in by_dag.items()},
            "download_scan_by_worker": dict(downloads)}, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, data) afterwards")
    args = parser.parse_args(argv)
    os.environ[standalone.RUN_MARK] = f"distributed-{os.getpid()}-{time.time_ns()}"
    folder = Path(tempfile.mkdtemp(prefix="xnat-distributed-"))
    os.chmod(folder, 0o755)  # the postgres user reaches its own folder inside
    sup = Supervisor()
    for sig in standalone.STOP_SIGNALS:  # Ctrl-C or CI's SIGTERM: stop everything below, then exit non-zero
        signal.signal(sig, sup.on_signal)
    d = Deployment(folder, sup)
    ok = False
    try:
        d.start()
        result = scenario(d)
        ok = True
    except standalone.Stop as stop:
        log(f"{stop}: stopping")
        return 1
    finally:
        clean = d.stop()
        log(f"stopped everything{'' if clean else ' (some processes had to be killed)'}; "
            f"run folder {folder}{'' if args.keep or not ok else ' (removed)'}")
        if ok and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    total = round(time.monotonic() - d.started, 1)
    report = {"total_seconds": total, "milestones_seconds": d.timings, **result,
              "workers": 2, "worker_concurrency": deployment.WORKER_CONCURRENCY}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    log(f"passed in {total:.0f} s: {json.dumps(result['spread'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
