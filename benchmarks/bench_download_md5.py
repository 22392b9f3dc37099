#!/usr/bin/env python3
"""A verified 1 GiB download against single-core MD5, side by side, alternating, nothing else running between them.

Why a script of its own: the goal is that hashing is the download's only cost (receiving and writing overlapped
with it), so the ceiling, MD5 over the same bytes on one core, is measured in every round beside the downloads.
On this 2-vCPU VM the kernel's copy of a written file into the page cache costs 0.2-3 s of system time per GiB
depending on what ran before (the hypervisor takes back memory the guest leaves free: the virtio balloon's free page
reporting, feature bit 5 in ``/sys/bus/virtio/devices/virtio0/features``, and writing into such pages again costs a
host page fault each), paid by the thread that receives; the client therefore writes a big file with ``O_DIRECT``
(``xnat_provider/client/part_file.py``), where the device reads the receive buffer itself. Contenders, in an order
that rotates with the round:

- ``md5``: ``hashlib.md5`` over the file held in memory, 1 MiB at a time (the ceiling of any verified transfer);
- ``client``: a fresh process running ``XnatClient.download_file`` (to ``.part``, size and MD5 checked against
  the catalog, renamed), its user and system CPU seconds;
- ``cached``: the same with ``direct_io=False`` (every byte through the page cache, as before ``O_DIRECT``);
- ``curl``: ``curl -o`` of the same URL (no verification, through the page cache), for scale.

Each download starts right after the previous download's file is deleted and ``os.sync()``; MD5, which writes
nothing, does neither.

    .venv/bin/python benchmarks/bench_download_md5.py [--size-mib 1024] [--rounds 6] [--no-curl] [--no-cached]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_client as bc  # noqa: E402  (its worker, MD5, curl and process helpers: one measurement, one way)

RESULTS = bc.ROOT / "benchmarks" / "results" / "download_md5.json"


def one_round(n: int, url: str, blob: Path, target: Path, data: memoryview, be, with_curl: bool = True,
              with_cached: bool = True) -> dict:
    """MD5, the client (direct and cached) and curl, in an order that rotates with ``n``; each download after a
    sync, from a deleted target."""
    rec: dict = {"round": n}
    file_url = f"{url}/data/projects/{bc.PROJECT}/resources/BENCH/files/{blob.name}"

    def md5() -> None:
        rec["md5_s"] = blob.stat().st_size / (bc.md5_rate(data) * bc.MB)

    def download(key: str, direct_io: bool) -> None:
        r = bc.run_worker("download", url=url, resource=f"/data/projects/{bc.PROJECT}/resources/BENCH",
                          name=blob.name, target=str(target), direct_io=direct_io)
        rec[key] = {k: r[k] for k in ("seconds", "user_s", "system_s")}

    def client() -> None:
        download("client", True)

    def cached() -> None:
        download("cached", False)

    def curl() -> None:
        rec["curl_s"] = be._check(bc.curl_to(target, file_url, be), (200,), "curl download")["time_total"]

    steps = [md5, client] + ([cached] if with_cached else []) + ([curl] if with_curl else [])
    k = n % len(steps)
    for step in steps[k:] + steps[:k]:
        if step is not md5:  # MD5 writes nothing; a download starts right after the last file is deleted
            target.unlink(missing_ok=True)
            os.sync()
        step()
    rec["ratio"] = rec["md5_s"] / rec["client"]["seconds"]
    if "cached" in rec:
        rec["cached_ratio"] = rec["md5_s"] / rec["cached"]["seconds"]
    return rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--no-curl", action="store_true", help="leave curl -o out")
    p.add_argument("--no-cached", action="store_true", help="leave the client with direct_io=False out")
    args = p.parse_args()
    os.environ["PYTHONPATH"] = bc.NO_PROXY_ENV["PYTHONPATH"]
    be = bc._emulator_helpers()
    blob = be.make_blob(args.size_mib)
    data = memoryview(blob.read_bytes())
    rounds = []
    # The server's files and the client's target in folders of their own, as on two machines: ext4 places a new
    # file near its folder's others, and a target written beside the emulator's 1 GiB file doubled the kernel's
    # time to allocate its blocks (system time 1.4-3.4 s instead of 0.6-1.0 s per GiB, for curl -o alike).
    with tempfile.TemporaryDirectory(prefix="xnat-bench-md5-", dir=bc.DATA) as work_s, \
            tempfile.TemporaryDirectory(prefix="xnat-bench-md5-target-") as target_s:
        work = Path(work_s)
        emu, url = be._start(bc.emulator_cmd(be, work / "emulator"), "XNAT emulator listening on")
        try:
            be._check(be.curl("-X", "PUT", f"{url}/data/projects/{bc.PROJECT}/resources/BENCH"), (200, 201), "res")
            with open(blob, "rb") as f:
                requests.put(f"{url}/data/projects/{bc.PROJECT}/resources/BENCH/files/{blob.name}?inbody=true",
                             data=f, auth=(bc.LOGIN, bc.PASSWORD), timeout=600).raise_for_status()
            for n in range(1, args.rounds + 1):
                rec = one_round(n, url, blob, Path(target_s) / "down.bin", data, be, not args.no_curl,
                                not args.no_cached)
                c = rec["client"]
                line = (f"round {n}: md5 {rec['md5_s']:.2f} s, client {c['seconds']:.2f} s (user {c['user_s']:.2f}, "
                        f"system {c['system_s']:.2f}), client/MD5 {rec['ratio']:.2f}")
                if "cached" in rec:
                    k = rec["cached"]
                    line += (f"; direct_io=False {k['seconds']:.2f} s (user {k['user_s']:.2f}, system "
                             f"{k['system_s']:.2f}), /MD5 {rec['cached_ratio']:.2f}")
                if "curl_s" in rec:
                    line += f"; curl -o {rec['curl_s']:.2f} s"
                print(f"{line}; load {os.getloadavg()[0]:.2f}", flush=True)
                rounds.append(rec)
        finally:
            be._stop(emu)
    ratio = statistics.median(r["ratio"] for r in rounds)
    print(f"\n{args.size_mib} MiB, {args.rounds} rounds: client / MD5 rate = {ratio:.2f} (median of per-round ratios;"
          f" goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    cached = [r["cached_ratio"] for r in rounds if "cached_ratio" in r]
    if cached:
        print(f"with direct_io=False (through the page cache): {statistics.median(cached):.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"size_mib": args.size_mib, "rounds": rounds, "median_ratio": ratio,
                                   "median_cached_ratio": statistics.median(cached) if cached else None,
                                   "machine": be.machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                  indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
