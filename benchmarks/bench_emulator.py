#!/usr/bin/env python3
"""Benchmark the XNAT emulator's file paths with curl, side by side with stdlib reference servers.

What is measured, each round on a fresh emulator (a separate process, data folder in a temporary directory):

- upload: ``curl -T big.bin`` (raw PUT) to a resource file, beside a minimal stdlib "sink" server that only
  writes the body to a file (``http.server`` cannot receive uploads);
- download: ``curl -o /dev/null`` of that stored file, beside ``python -m http.server`` serving the very same
  file from the emulator's data folder (same inode, same page cache);
- import: ``curl -T study.zip -X POST`` of a zip of real DICOM to ``/data/services/import?dest=/prearchive``,
  beside the client's own import of the same zip (``XnatClient.import_dicom``, in a separate process: headers
  read first, then the body ``zip_stream`` writes, DEFLATED at level 0 as XNAT's Java reader needs) into a
  second project, in alternating order.

For each operation the emulator's memory growth is its peak resident set size during the operation minus its
resident set size at idle just before it. The peak is read from ``VmHWM`` in ``/proc/PID/status`` after
resetting it (``echo 5 > /proc/PID/clear_refs``) and cross-checked with a 20 ms ``VmRSS`` sampler.

Rates are MB/s = 10^6 bytes per second as curl reports them; the table shows the median over rounds, and the
ratio column is the median of the per-round ratios (both servers measured back to back in the same round, in
alternating order). Test data is generated once and cached under ``benchmarks/.data/`` (git-ignored).
Results go to ``benchmarks/results/emulator.json``.

    .venv/bin/python benchmarks/bench_emulator.py [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / ".data"
RESULTS = ROOT / "benchmarks" / "results" / "emulator.json"
MIB = 1 << 20
MB = 1_000_000
USER = "admin:admin"
CURL_W = "%{http_code} %{size_download} %{size_upload} %{speed_download} %{speed_upload} %{time_total}"

# A stdlib server that receives a PUT/POST body and writes it to a file: the reference for uploads.
SINK = r"""
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_PUT(self):
        n = int(self.headers["Content-Length"])
        with open(sys.argv[1], "wb") as f:
            while n:
                b = self.rfile.read(min(n, 1 << 20))
                if not b:
                    break
                f.write(b)
                n -= len(b)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_POST = do_PUT
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"listening on http://127.0.0.1:{s.server_port}/", flush=True)
s.serve_forever()
"""


# ---- test data ---------------------------------------------------------------------------------------
def make_blob(size_mib: int) -> Path:
    path = DATA / f"blob-{size_mib}MiB.bin"
    if path.exists() and path.stat().st_size == size_mib * MIB:
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    t0 = time.monotonic()
    with open(tmp, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MIB))
    os.replace(tmp, path)
    print(f"generated {path.name} in {time.monotonic() - t0:.1f} s", flush=True)
    return path


def make_import_zip(size_mib: int, side: int = 512, series: int = 4) -> tuple[Path, int]:
    """A stored (uncompressed) zip of real DICOM: pydicom's MR_small.dcm with a side x side 16-bit image.

    512 x 512 x 16 bit (a CT-sized slice, 512 KiB) per instance: 2048 instances for 1 GiB in ``series``
    series of one study. Returns the path and the instance count.
    """
    import pydicom
    from pydicom.uid import generate_uid

    from xnat_provider.testing.samples import template

    per_file = side * side * 2
    count = max(series, -(-size_mib * MIB // per_file))
    path = DATA / f"import-{size_mib}MiB-{side}px.zip"
    if path.exists() and path.stat().st_size >= size_mib * MIB:
        return path, count
    DATA.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    base = pydicom.dcmread(template("MR"))
    study_uid = generate_uid()
    tmp = path.with_suffix(".part")
    per_series = -(-count // series)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        n = 0
        for s in range(1, series + 1):
            series_uid = generate_uid()
            for i in range(1, per_series + 1):
                if n == count:
                    break
                n += 1
                ds = base.copy()
                ds.PatientName, ds.PatientID = "BENCH01", "BENCH01_MR1"
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = s, f"BENCH{s}", i
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.StudyDate, ds.StudyTime = "20240115", "101500"
                ds.Rows = ds.Columns = side
                ds.PixelData = os.urandom(per_file)
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                zf.writestr(f"BENCH01/s{s}/i{i:05d}.dcm", buf.getvalue())
    os.replace(tmp, path)
    print(f"generated {path.name} ({count} instances) in {time.monotonic() - t0:.1f} s", flush=True)
    return path, count


# ---- processes -----------------------------------------------------------------------------------------
def _start(cmd: list[str], prefix: str, stderr: object = subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if prefix not in line:
        proc.kill()
        raise RuntimeError(f"{cmd[0]} did not start: {line!r}")
    url = line[line.index("http://") :].split()[0].rstrip("/").rstrip(")")
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def emulator_cmd(data_dir: Path) -> list[str]:
    exe = Path(sys.executable).parent / "xnat-emulator"
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "xnat_provider.testing"]
    return [*head, "--port", "0", "--data-dir", str(data_dir), "--user", USER, "--project", "P1", "--project", "P2"]


# The client's import, timed in its own process (the import call alone: planning, the POST and XNAT's answer).
CLIENT_IMPORT = r"""
import sys, time
from xnat_provider.client import XnatClient
url, source = sys.argv[1], sys.argv[2]
with XnatClient(url, "admin", "admin") as xnat:
    xnat.login()
    t0 = time.perf_counter()
    refs = xnat.import_dicom(source, "P2")
    print(time.perf_counter() - t0, len(refs))
"""


# ---- memory --------------------------------------------------------------------------------------------
def status_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


class MemoryWatch:
    """Peak RSS of a process during a block: VmHWM after a reset, and a 20 ms VmRSS sampler."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self) -> MemoryWatch:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        time.sleep(0.05)
        self.before = status_kib(self.pid)["VmRSS"]
        self.sampled = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, KeyError):
                self.sampled = max(self.sampled, status_kib(self.pid)["VmRSS"])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        st = status_kib(self.pid)
        self.after = st["VmRSS"]
        self.hwm = st["VmHWM"]
        peak = max(self.sampled, self.hwm) if self.hwm_reset else self.sampled
        self.peak = peak
        self.growth_mib = (peak - self.before) / 1024

    def as_dict(self) -> dict:
        return {
            "rss_before_kib": self.before,
            "peak_kib": self.peak,
            "rss_after_kib": self.after,
            "vmhwm_kib": self.hwm,
            "hwm_reset": self.hwm_reset,
            "growth_mib": round(self.growth_mib, 1),
        }


# ---- curl ----------------------------------------------------------------------------------------------
def curl(*args: str, auth: bool = True) -> dict:
    cmd = ["curl", "-sS", "--max-time", "1800", "-o", "/dev/null", "-w", CURL_W]
    if auth:
        cmd += ["-u", USER]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"curl failed ({out.returncode}): {out.stderr.strip()}")
    code, down, up, sdown, sup, total = out.stdout.split()
    return {
        "status": int(code),
        "size_download": int(float(down)),
        "size_upload": int(float(up)),
        "speed_download": float(sdown),
        "speed_upload": float(sup),
        "time_total": float(total),
    }


def _check(r: dict, status: tuple[int, ...], what: str) -> dict:
    if r["status"] not in status:
        raise RuntimeError(f"{what}: HTTP {r['status']}")
    return r


# ---- one round -----------------------------------------------------------------------------------------
def one_round(n: int, blob: Path, zip_path: Path, work: Path) -> dict:
    data_dir = work / f"emulator-{n}"
    log = open(work / f"emulator-{n}.log", "w")
    emu, url = _start(emulator_cmd(data_dir), "XNAT emulator listening on", stderr=log)
    sink_file = work / "sink.bin"
    sink, sink_url = _start([sys.executable, "-c", SINK, str(sink_file)], "listening on")
    static = None
    rec: dict = {"round": n}
    try:
        time.sleep(0.3)
        file_url = f"{url}/data/projects/P1/resources/BENCH/files/big.bin"
        _check(curl("-X", "PUT", f"{url}/data/projects/P1/resources/BENCH"), (200, 201), "create resource")
        size = blob.stat().st_size
        emulator_first = n % 2 == 1

        # upload: emulator and the sink, in alternating order
        def up_emulator() -> None:
            with MemoryWatch(emu.pid) as mem:
                r = _check(
                    curl(
                        "-T",
                        str(blob),
                        "-H",
                        "Content-Type: application/octet-stream",
                        f"{file_url}?inbody=true&overwrite=true",
                    ),
                    (200, 201),
                    "upload",
                )
            rec["upload"] = {**r, "memory": mem.as_dict()}

        def up_sink() -> None:
            r = _check(curl("-T", str(blob), f"{sink_url}/big.bin", auth=False), (201,), "sink upload")
            rec["upload_ref"] = r
            sink_file.unlink(missing_ok=True)

        for step in (up_emulator, up_sink) if emulator_first else (up_sink, up_emulator):
            step()
        stored = [p for p in data_dir.rglob("big.bin") if p.is_file()]
        if len(stored) != 1 or stored[0].stat().st_size != size:
            raise RuntimeError(f"the uploaded file is not stored as expected: {stored}")

        # download: emulator and python -m http.server serving the very same stored file
        static, static_url = _start(
            [
                sys.executable,
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(stored[0].parent),
            ],
            "Serving HTTP",
        )
        curl("-o", "/dev/null", f"{static_url}/big.bin", auth=False)  # warm both page cache and processes
        _check(curl(file_url), (200,), "warm-up download")

        def down_emulator() -> None:
            with MemoryWatch(emu.pid) as mem:
                r = _check(curl(file_url), (200,), "download")
            if r["size_download"] != size:
                raise RuntimeError("short download from the emulator")
            rec["download"] = {**r, "memory": mem.as_dict()}

        def down_static() -> None:
            with MemoryWatch(static.pid) as mem:  # type: ignore[union-attr]
                r = _check(curl(f"{static_url}/big.bin", auth=False), (200,), "static download")
            rec["download_ref"] = {**r, "memory": mem.as_dict()}

        for step in (down_emulator, down_static) if emulator_first else (down_static, down_emulator):
            step()

        # import: a zip of real DICOM into the prearchive (built, since dest is given), sent by curl as it is
        # stored, and by the client (re-zipped on the fly) into the other project
        def import_curl() -> None:
            with MemoryWatch(emu.pid) as mem:
                r = _check(
                    curl(
                        "-T",
                        str(zip_path),
                        "-X",
                        "POST",
                        "-H",
                        "Content-Type: application/zip",
                        f"{url}/data/services/import?dest=/prearchive&project=P1",
                    ),
                    (200,),
                    "import",
                )
            rec["import"] = {**r, "memory": mem.as_dict()}

        def import_client() -> None:
            with MemoryWatch(emu.pid) as mem:
                out = subprocess.run([sys.executable, "-c", CLIENT_IMPORT, url, str(zip_path)], capture_output=True,
                                     text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"client import failed: {out.stderr.strip()[-500:]}")
            seconds, refs = out.stdout.split()
            rec["import_client"] = {"time_total": float(seconds), "sessions": int(refs), "memory": mem.as_dict()}

        for step in (import_curl, import_client) if emulator_first else (import_client, import_curl):
            step()
    finally:
        for proc in (static, sink, emu):
            if proc is not None:
                _stop(proc)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        sink_file.unlink(missing_ok=True)
    return rec


def mbps(r: dict, key: str, size: int) -> float:
    """Bytes over total time: for an upload or an import that includes the server's work after the body."""
    if key == "speed_download":
        return r["speed_download"] / MB
    return size / r["time_total"] / MB


def summarise(rounds: list[dict], size: int, zip_size: int) -> dict:
    med = statistics.median

    def series(op: str, key: str, n: int) -> list[float]:
        return [mbps(r[op], key, n) for r in rounds]

    down, down_ref = series("download", "speed_download", size), series("download_ref", "speed_download", size)
    up, up_ref = series("upload", "speed_upload", size), series("upload_ref", "speed_upload", size)
    imp = series("import", "speed_upload", zip_size)
    imp_client = series("import_client", "speed_upload", zip_size)
    return {
        "download": {
            "emulator_mbps": med(down),
            "http_server_mbps": med(down_ref),
            "ratio": med(a / b for a, b in zip(down, down_ref, strict=True)),
            "memory_growth_mib": max(r["download"]["memory"]["growth_mib"] for r in rounds),
            "http_server_memory_growth_mib": max(r["download_ref"]["memory"]["growth_mib"] for r in rounds),
        },
        "upload": {
            "emulator_mbps": med(up),
            "sink_mbps": med(up_ref),
            "ratio": med(a / b for a, b in zip(up, up_ref, strict=True)),
            "memory_growth_mib": max(r["upload"]["memory"]["growth_mib"] for r in rounds),
        },
        "import": {
            "emulator_mbps": med(imp),
            "memory_growth_mib": max(r["import"]["memory"]["growth_mib"] for r in rounds),
        },
        "import_client": {
            "emulator_mbps": med(imp_client),
            "ratio_to_curl": med(a / b for a, b in zip(imp_client, imp, strict=True)),
            "memory_growth_mib": max(r["import_client"]["memory"]["growth_mib"] for r in rounds),
        },
    }


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    curl_version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "curl": curl_version,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of the file and of the import zip")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is needed: apt-get update && apt-get install -y curl", file=sys.stderr)
        return 2
    blob = make_blob(args.size_mib)
    zip_path, instances = make_import_zip(args.size_mib)
    size, zip_size = blob.stat().st_size, zip_path.stat().st_size
    rounds = []
    with tempfile.TemporaryDirectory(prefix="xnat-bench-", dir=DATA) as work:
        for n in range(1, args.rounds + 1):
            rec = one_round(n, blob, zip_path, Path(work))
            print(
                f"round {n}: download {rec['download']['speed_download'] / MB:.0f} MB/s "
                f"(http.server {rec['download_ref']['speed_download'] / MB:.0f}), "
                f"upload {mbps(rec['upload'], 'speed_upload', size):.0f} MB/s "
                f"(sink {mbps(rec['upload_ref'], 'speed_upload', size):.0f}), "
                f"import {mbps(rec['import'], 'speed_upload', zip_size):.0f} MB/s "
                f"(by the client {mbps(rec['import_client'], 'speed_upload', zip_size):.0f})",
                flush=True,
            )
            rounds.append(rec)
    summary = summarise(rounds, size, zip_size)
    d, u, i, ic = summary["download"], summary["upload"], summary["import"], summary["import_client"]
    rows = [
        (
            "download (GET)",
            d["emulator_mbps"],
            f"{d['http_server_mbps']:.0f} (http.server)",
            f"{d['ratio']:.2f}",
            d["memory_growth_mib"],
        ),
        (
            "upload (PUT raw)",
            u["emulator_mbps"],
            f"{u['sink_mbps']:.0f} (stdlib sink)",
            f"{u['ratio']:.2f}",
            u["memory_growth_mib"],
        ),
        ("import (POST zip)", i["emulator_mbps"], "-", "-", i["memory_growth_mib"]),
        ("import by client", ic["emulator_mbps"], f"{i['emulator_mbps']:.0f} (curl, stored zip)",
         f"{ic['ratio_to_curl']:.2f}", ic["memory_growth_mib"]),
    ]
    print(
        f"\n{args.size_mib} MiB file, {zip_size / MIB:.0f} MiB import zip ({instances} DICOM instances), "
        f"median of {args.rounds} rounds; MB/s = 10^6 B/s"
    )
    print(f"{'operation':<18} {'emulator MB/s':>14} {'reference MB/s':>24} {'ratio':>6} {'mem growth MiB':>15}")
    for name, rate, ref, ratio, mem in rows:
        print(f"{name:<18} {rate:>14.0f} {ref:>24} {ratio:>6} {mem:>15.1f}")
    print(f"http.server memory growth during its download: {d['http_server_memory_growth_mib']:.1f} MiB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "size_mib": args.size_mib,
                "import_zip_bytes": zip_size,
                "import_instances": instances,
                "rounds": args.rounds,
                "machine": machine(),
                "summary": summary,
                "per_round": rounds,
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {RESULTS.relative_to(ROOT)}")
    ok = d["ratio"] >= 0.8 and max(d["memory_growth_mib"], u["memory_growth_mib"], i["memory_growth_mib"],
                                   ic["memory_growth_mib"]) < 100
    print("targets (download >= 0.8 x http.server, memory growth < 100 MiB):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
