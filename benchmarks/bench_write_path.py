#!/usr/bin/env python3
"""What writing a GiB costs this machine's kernel, through the page cache and with ``O_DIRECT``, alternating.

Why: the downloads' ceiling is MD5 on one core, and the kernel's copy of written bytes into the page cache competes
with it for the CPU (see BENCHMARKS.md, "Why writing around the page cache was the missing piece"). This measures
only that copy: 1 GiB written from one hot, page-aligned 1 MiB buffer into a new file in ``--dir``, the file deleted
and ``os.sync()`` after each write, in a fresh process each time so that the CPU seconds are the write's alone.

    .venv/bin/python benchmarks/bench_write_path.py [--dir benchmarks/results] [--rounds 3] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def write_once(mode: str, path: str, size: int) -> dict:
    chunk = 1 << 20
    buf = mmap.mmap(-1, chunk)
    buf.write(os.urandom(chunk))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if mode == "direct" else 0)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fd = os.open(path, flags, 0o644)
    view = memoryview(buf)
    for _ in range(size // chunk):
        os.write(fd, view)
    os.close(fd)
    seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "seconds": seconds, "system_s": r1.ru_stime - r0.ru_stime, "mb_s": size / seconds / 1e6}


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--once":
        print(json.dumps(write_once(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size-mib", type=int, default=1024)
    args = p.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    target = os.path.join(args.dir, "write-path.bin")
    for n in range(1, args.rounds + 1):
        for mode in ("buffered", "direct"):
            out = subprocess.run([sys.executable, __file__, "--once", mode, target, str(args.size_mib << 20)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            os.unlink(target)
            os.sync()
            print(f"round {n} {mode:8}: {r['seconds']:.2f} s, {r['mb_s']:.0f} MB/s, system {r['system_s']:.2f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
