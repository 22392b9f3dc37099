#!/usr/bin/env python3
"""Benchmark a triggerer's event loop full of deferred XNAT sensors: what XNAT receives, and the loop's CPU.

What one run does, for each N: start the XNAT emulator as a separate process (``python -m xnat_provider.testing``,
so that its CPU is not this process's), put 3 READY sessions in project P1's prearchive and archive 3 experiments;
then, in one asyncio event loop, as Airflow's triggerer runs triggers (each trigger's ``run()`` consumed by its own
task), run N ``XnatPrearchiveTrigger`` (the trigger of a deferred ``XnatPrearchiveSensor``, each waiting for a
prearchive session labelled ``WAIT_i`` that never comes, so each judges the 3 rows every round) and N
``XnatExperimentTrigger`` (a deferred ``XnatExperimentSensor``, each waiting for an experiment ``NEVER_i``), all on
one connection at ``--interval`` seconds. After ``--warmup`` intervals (every trigger reads its connection, logs
in or joins a login, and polls), the emulator's request counts are reset (its control API) and the loop runs
``--rounds`` intervals; then:

- logins: ``POST /data/services/auth`` from the start (every login the triggers made);
- requests per round: what the emulator received during the measured window, divided by the rounds in it
  (prearchive listings, experiment listings, all requests);
- CPU per round: this process's CPU time (``time.process_time``: user + system, every thread) during the window,
  divided by the rounds; as a fraction of one core: CPU seconds per second of the window. At another interval,
  the same work per round costs CPU per round / interval (the ``--interval 30`` run measures it directly).

The code measured is whatever ``xnat_provider`` Python imports: this checkout, or another one on ``PYTHONPATH``
(``git archive HEAD xnat_provider | tar -x -C /tmp/before`` gives the code before a change). The emulator always
runs from this checkout. Results are printed as a Markdown table and added to ``--json`` when given.

    .venv/bin/python benchmarks/bench_triggerer.py --n 10 100 1000 --interval 2 --rounds 5
    .venv/bin/python benchmarks/bench_triggerer.py --n 1000 --interval 30 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
AUTH = ("admin", "admin")


class Emulator:
    """The emulator in its own process, driven over HTTP (its control API counts requests)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "xnat_provider.testing", "--project", "P1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        params = {k: v for k, v in (("method", method), ("path", path)) if v}
        return int(requests.get(f"{self.url}/__emulator__/requests", params=params, timeout=30).json()["count"])

    def reset_counts(self) -> None:
        requests.delete(f"{self.url}/__emulator__/requests", timeout=30).raise_for_status()

    def seed(self, workdir: Path) -> None:
        """Three READY prearchive sessions and three archived experiments in P1."""
        from xnat_provider.testing.samples import make_study, zip_files

        for i in range(6):
            label = f"SEED{i}_MR1"
            study = make_study(workdir / label, patient_name=f"SEED{i}", patient_id=label, instances=1,
                               series=((1, "T1"),))
            body = zip_files(study.files, workdir / f"{label}.zip").read_bytes()
            dest = "/archive/projects/P1" if i >= 3 else "/prearchive/projects/P1"
            requests.post(f"{self.url}/data/services/import", auth=AUTH, data=body,
                          params={"import-handler": "DICOM-zip", "dest": dest},
                          headers={"Content-Type": "application/zip"}, timeout=60).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def measure(emu: Emulator, n: int, interval: float, warmup: int, rounds: int) -> dict[str, Any]:
    """N prearchive and N experiment triggers in this loop, as the triggerer runs them; counts and CPU."""
    from xnat_provider.triggers.experiment import XnatExperimentTrigger
    from xnat_provider.triggers.prearchive import XnatPrearchiveTrigger

    emu.reset_counts()
    triggers = [XnatPrearchiveTrigger(criteria={"project": "P1", "experiment": f"WAIT_{i}"}, poll_interval=interval)
                for i in range(n)]
    triggers += [XnatExperimentTrigger(criteria={"project": "P1", "experiment": f"NEVER_{i}"},
                                       poll_interval=interval) for i in range(n)]
    events: list[Any] = []

    async def run(trigger: Any) -> None:  # the triggerer's TriggerRunner.run_trigger, in short
        async for event in trigger.run():
            events.append(event.payload)

    tasks = [asyncio.create_task(run(t)) for t in triggers]
    started = time.monotonic()
    await asyncio.sleep(warmup * interval)
    logins = await asyncio.to_thread(emu.count, "POST", r"^/data/services/auth$")
    await asyncio.to_thread(emu.reset_counts)
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(rounds * interval)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    counts = await asyncio.gather(*(asyncio.to_thread(emu.count, m, p) for m, p in (
        ("GET", r"^/data/prearchive/projects/P1$"), ("GET", r"^/data/projects/P1/experiments"),
        (None, None), ("POST", r"^/data/services/auth$"))))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.5)  # the last logouts
    if events:
        raise RuntimeError(f"a trigger fired or failed: {events[:3]}")
    window_rounds = wall / interval
    return {"n": n, "interval": interval, "rounds": rounds, "logins": logins + counts[3],
            "prearchive_listings_per_round": counts[0] / window_rounds,
            "experiment_requests_per_round": counts[1] / window_rounds,
            "requests_per_round": counts[2] / window_rounds,
            "cpu_s_per_round": cpu / window_rounds, "core_fraction": cpu / wall,
            "warmup_s": round(wall0 - started, 1)}


def row(r: dict[str, Any], label: str) -> str:
    return (f"| {label} | {r['n']} + {r['n']} | {r['interval']:g} s | {r['logins']} | "
            f"{r['prearchive_listings_per_round']:.1f} | {r['experiment_requests_per_round']:.1f} | "
            f"{r['requests_per_round']:.1f} | {r['cpu_s_per_round'] * 1000:.1f} ms | "
            f"{r['core_fraction'] * 100:.2f} % | {r['cpu_s_per_round'] / 30 * 100:.2f} % |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000], help="triggers of each kind")
    p.add_argument("--interval", type=float, default=2.0, help="the sensors' poke_interval, in seconds")
    p.add_argument("--warmup", type=int, default=2, help="intervals before measuring")
    p.add_argument("--rounds", type=int, default=5, help="intervals measured")
    p.add_argument("--label", default="this checkout", help="what the table's first column says")
    p.add_argument("--json", type=Path, help="append the results to this JSON file")
    args = p.parse_args()

    home = tempfile.mkdtemp(prefix="bench-triggerer-airflow-")
    os.environ.update(AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False",
                      AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING")
    import logging

    logging.basicConfig(level=logging.WARNING)
    import xnat_provider

    print(f"xnat_provider from {Path(xnat_provider.__file__).parent}", file=sys.stderr)
    emu = Emulator()
    results = []
    try:
        with tempfile.TemporaryDirectory() as work:
            emu.seed(Path(work))
        os.environ["AIRFLOW_CONN_XNAT_DEFAULT"] = json.dumps({
            "conn_type": "xnat", "host": emu.url, "login": "admin", "password": "admin"})
        print("| code | triggers (prearchive + experiment) | interval | logins | prearchive listings / round | "
              "experiment requests / round | all requests / round | loop CPU / round | of one core | "
              "of one core at 30 s |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.n:
            r = asyncio.run(measure(emu, n, args.interval, args.warmup, args.rounds))
            results.append(r)
            print(row(r, args.label), flush=True)
    finally:
        emu.stop()
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps([*old, *({**r, "label": args.label, "python": platform.python_version(),
                                                  "cpus": os.cpu_count()} for r in results)], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
