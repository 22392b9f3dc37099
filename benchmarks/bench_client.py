#!/usr/bin/env python3
"""Benchmark the XNAT client against the emulator, side by side with MD5, curl, xnatpy and pyxnat.

What is measured, on loopback against an ``xnat-emulator`` subprocess (a fresh one per round for the big file):

- MD5 on this machine, each round: ``hashlib.md5`` over the 1 GiB file held in memory, in 1 MiB pieces, on one
  core: the ceiling of any verified transfer (every byte is hashed once, and one MD5 cannot be split);
- download: ``XnatClient.list_files`` + ``download_file`` of a 1 GiB resource file (streamed to ``.part``, MD5
  checked against the catalog, renamed) beside ``curl -o FILE`` of the same URL, and beside
  ``curl | tee FILE | md5sum`` (curl plus the verification the client does, in a pipeline); the MD5 of that round
  runs in the same rotation;
- upload: ``XnatClient.upload`` of the 1 GiB file to a project resource (hashed while sent, PUT, catalog listed
  again and compared) beside ``curl -T`` (raw PUT) of the same file, with the CPU seconds of the sender and of the
  emulator for each (who is the limit: on 2 cores the emulator's own MD5 and the client's compete);
- peak memory of each client run above the interpreter's baseline: every client run is its own Python process;
  the baseline is its ``VmRSS`` after the imports (and ``gc.collect()``), then ``VmHWM`` is reset
  (``echo 5 > /proc/self/clear_refs``) and read again after the transfer;
- a 500-file scan (real DICOM from ``xnat_provider.testing.samples.make_study``, imported once into the
  archive) downloaded by ``XnatClient.download_scans``, by xnatpy's ``scan.download_dir`` and by pyxnat's
  ``scan.resource('DICOM').get(dest, extract=True)``, each in a fresh process and folder; all three must end
  up with the same file names and bytes;
- from nothing to the first answered call: ``XnatClient(...).list_projects()``, ``xnat.connect(...)`` +
  ``session.projects`` and ``pyxnat.Interface(...).select.projects().get()``, each in a fresh process: the
  import time, the time to the answer, and the requests the emulator counted.

Rates are MB/s = 10^6 bytes per second, computed as bytes over the wall time of the whole operation (for the
client: from constructing ``XnatClient`` to the verified result; for curl: its ``time_total``). Client and
references run back to back in the same round, in alternating (rotating, for three or more) order; the table shows
medians over rounds and each ratio is the median of per-round ratios. Test data is cached under
``benchmarks/.data/`` (git-ignored); results go to ``benchmarks/results/client.json`` (git-ignored).

    .venv/bin/python benchmarks/bench_client.py [--size-mib 1024] [--rounds 3] [--files 500]
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before any other import: "from nothing" for the first-call workers

import argparse  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "benchmarks" / ".data"
RESULTS = ROOT / "benchmarks" / "results" / "client.json"
MIB = 1 << 20
MB = 1_000_000
LOGIN, PASSWORD = "admin", "admin"
PROJECT = "P1"
NO_PROXY_ENV = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
NO_PROXY_ENV["NO_PROXY"] = NO_PROXY_ENV["no_proxy"] = "127.0.0.1,localhost"
# This checkout's code in every process the benchmark starts (workers, emulators), whatever the venv points at.
NO_PROXY_ENV["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


# ==== worker side: one client run per process ===========================================================
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _baseline() -> dict:
    """The interpreter's RSS after imports; then reset VmHWM so that the peak read later is this run's."""
    gc.collect()
    base = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    return {"baseline_kib": base, "hwm_reset": reset}


def _peak(mem: dict) -> dict:
    hwm = _status_kib("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; includes the imports
    peak = hwm if mem["hwm_reset"] else maxrss
    return {**mem, "vmhwm_kib": hwm, "ru_maxrss_kib": maxrss,
            "above_baseline_mib": round((peak - mem["baseline_kib"]) / 1024, 1)}


def _tree_digest(root: Path) -> dict[str, str]:
    """{file name: md5} of every file under ``root`` except zips (pyxnat leaves its zip behind)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and p.suffix != ".zip":
            out[p.name] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def worker(mode: str, a: dict) -> dict:
    """One measurement in this (fresh) process: a big transfer, a scan download, or a first call."""
    if mode in ("download", "upload"):
        return _transfer_worker(mode, a)
    if mode.startswith("scan-"):
        return _scan_worker(mode, a)
    if mode.startswith("first-"):
        return _first_call_worker(mode, a)
    raise SystemExit(f"unknown worker mode {mode}")


def _transfer_worker(mode: str, a: dict) -> dict:
    """The client's 1 GiB download or upload: time, CPU (user and system) and peak memory."""
    from xnat_provider.client import XnatClient

    mem = _baseline()
    cpu0 = time.process_time()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    with XnatClient(a["url"], LOGIN, PASSWORD, direct_io=a.get("direct_io", True)) as c:
        if mode == "download":
            remote = next(f for f in c.list_files(a["resource"]) if f.path == a["name"])
            entry = c.download_file(remote, a["target"])
            size = entry["size"]
        else:
            manifest = c.upload(a["source"], f"/data/projects/{PROJECT}", a["resource_label"])
            size = manifest.bytes
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        requests_sent = c.transport.requests_sent
    return {"seconds": seconds, "bytes": size, "requests_sent": requests_sent, "cpu_s": cpu,
            "user_s": ru1.ru_utime - ru0.ru_utime, "system_s": ru1.ru_stime - ru0.ru_stime,
            "memory": _peak(mem)}


def _scan_worker(mode: str, a: dict) -> dict:
    """One scan's files downloaded by this client, xnatpy or pyxnat: the time, and what landed (to compare)."""
    url = a["url"]
    if mode == "scan-ours":
        from xnat_provider.client import XnatClient

        t0 = time.perf_counter()
        with XnatClient(url, LOGIN, PASSWORD) as c:
            c.download_scans(PROJECT, a["label"], a["dest"], scans=[a["scan"]])
        seconds = time.perf_counter() - t0
    elif mode == "scan-xnatpy":
        import xnat

        t0 = time.perf_counter()
        with xnat.connect(url, user=LOGIN, password=PASSWORD, loglevel="ERROR") as s:
            scan = s.projects[PROJECT].subjects[a["subject"]].experiments[a["label"]].scans[a["scan"]]
            scan.download_dir(a["dest"], verbose=False)
        seconds = time.perf_counter() - t0
    elif mode == "scan-pyxnat":
        import pyxnat

        t0 = time.perf_counter()
        iface = pyxnat.Interface(server=url, user=LOGIN, password=PASSWORD)
        exp = iface.select.project(PROJECT).subject(a["subject"]).experiment(a["label"])
        exp.scan(a["scan"]).resource("DICOM").get(a["dest"], extract=True)
        iface.disconnect()
        seconds = time.perf_counter() - t0
    else:
        raise SystemExit(f"unknown worker mode {mode}")
    files = _tree_digest(Path(a["dest"]))
    return {"seconds": seconds, "files": len(files), "bytes": sum(p.stat().st_size for p in Path(a["dest"]).rglob("*")
                                                                   if p.is_file() and p.suffix != ".zip"),
            "digests": files}


def _first_call_worker(mode: str, a: dict) -> dict:
    """From nothing to the first answered call (a project listing) with this client, xnatpy or pyxnat: the
    time of each step and the requests the emulator counted."""
    url = a["url"]
    _get(f"{url}/__emulator__/requests", "DELETE")
    t_import = time.perf_counter()
    if mode == "first-ours":
        from xnat_provider.client import XnatClient

        t_call = time.perf_counter()
        c = XnatClient(url, LOGIN, PASSWORD)
        answer = c.list_projects()
        t_end = time.perf_counter()
    elif mode == "first-xnatpy":
        import xnat

        t_call = time.perf_counter()
        c = xnat.connect(url, user=LOGIN, password=PASSWORD, loglevel="ERROR")
        answer = list(c.projects.keys())
        t_end = time.perf_counter()
    else:
        import pyxnat

        t_call = time.perf_counter()
        c = pyxnat.Interface(server=url, user=LOGIN, password=PASSWORD)
        answer = c.select.projects().get()
        t_end = time.perf_counter()
    counts = json.loads(_get(f"{url}/__emulator__/faults"))["counts"]
    with_close = getattr(c, "close", None) or getattr(c, "disconnect", None)
    if with_close:
        with_close()
    return {
        "answer": sorted(answer),
        "python_startup_s": t_import - T_START,  # this script's stdlib imports; the same for all three
        "import_s": t_call - t_import,
        "connect_to_answer_s": t_end - t_call,
        "nothing_to_answer_s": t_end - T_START,
        "requests": sum(c["count"] for c in counts),
        "by_path": counts,
    }


def _get(url: str, method: str = "GET") -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, method=method), timeout=60) as r:
        return r.read().decode()


def run_worker(mode: str, **a: object) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", mode, json.dumps(a)],
                         capture_output=True, text=True, env=NO_PROXY_ENV, check=False, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ==== driver side ========================================================================================
def _emulator_helpers():  # the emulator benchmark's process and curl helpers, shared rather than copied
    sys.path.insert(0, str(HERE))
    import bench_emulator

    return bench_emulator


def emulator_cmd(be, data_dir: Path) -> list[str]:
    """The emulator benchmark's command, run as ``python -m xnat_provider.testing`` (this checkout's code, see
    PYTHONPATH above; not the venv's console script, which a reinstall may replace while the benchmark runs)."""
    cmd = be.emulator_cmd(data_dir)
    return cmd if cmd[0] == sys.executable else [sys.executable, "-m", "xnat_provider.testing", *cmd[1:]]


def make_scan(files: int) -> Path:
    """A DICOM session of ``files`` instances in one series (pydicom's MR_small.dcm with fresh UIDs)."""
    path = DATA / f"scan-{files}"
    if path.is_dir() and len(list(path.glob("*.dcm"))) == files:
        return path
    from xnat_provider.testing.samples import make_study

    shutil.rmtree(path, ignore_errors=True)
    t0 = time.monotonic()
    make_study(path, patient_name="BENCH", patient_id="BENCH_MR1", series=((1, "T1"),), instances=files,
               uid_seed=f"bench-client-{files}")
    print(f"generated {path.name} ({files} DICOM files) in {time.monotonic() - t0:.1f} s", flush=True)
    return path


def md5_rate(data: memoryview | None = None) -> float:
    """CPython's (OpenSSL's) MD5 on this machine, MB/s, one core: the ceiling of any verified transfer. Over
    ``data`` (the benchmark's file, held in memory) in 1 MiB pieces, or over 256 MiB of random bytes."""
    if data is None:
        data = memoryview(os.urandom(MIB) * 256)
    h = hashlib.md5()
    t0 = time.perf_counter()
    for i in range(0, len(data), MIB):
        h.update(data[i:i + MIB])
    return len(data) / (time.perf_counter() - t0) / MB


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def curl_to(target: Path, url: str, be) -> dict:
    """``curl -o TARGET URL`` with the emulator benchmark's ``-w`` figures (its ``curl`` writes to /dev/null)."""
    out = subprocess.run(["curl", "-sS", "--max-time", "1800", "-u", f"{LOGIN}:{PASSWORD}", "-o", str(target),
                          "-w", be.CURL_W, url], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"curl failed ({out.returncode}): {out.stderr.strip()}")
    code, down, _up, sdown, _sup, total = out.stdout.split()
    return {"status": int(code), "size_download": int(float(down)), "speed_download": float(sdown),
            "time_total": float(total)}


def big_round(n: int, blob: Path, work: Path, be, data: memoryview) -> dict:
    """One round of the 1 GiB measurements, in the rotation that keeps them comparable (MD5, the downloads, the
    uploads, with the syncs between them). Kept whole on purpose: the order of the steps is the method, and it
    reads top to bottom as BENCHMARKS.md describes it."""
    data_dir = work / f"emulator-{n}"
    log = open(work / f"emulator-{n}.log", "w")
    emu, url = be._start(emulator_cmd(be, data_dir), "XNAT emulator listening on", stderr=log)
    size = blob.stat().st_size
    rec: dict = {"round": n}
    target = work / "down.bin"
    try:
        time.sleep(0.3)
        be._check(be.curl("-X", "PUT", f"{url}/data/projects/{PROJECT}/resources/CURL"), (200, 201), "resource")

        def up_client() -> None:
            e0 = cpu_seconds(emu.pid)
            rec["upload_client"] = run_worker("upload", url=url, source=str(blob), resource_label="BENCH")
            rec["upload_client"]["emulator_cpu_s"] = cpu_seconds(emu.pid) - e0

        def up_curl() -> None:
            e0 = cpu_seconds(emu.pid)
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            rec["upload_curl"] = be._check(be.curl(
                "-T", str(blob), "-H", "Content-Type: application/octet-stream",
                f"{url}/data/projects/{PROJECT}/resources/CURL/files/{blob.name}?inbody=true&overwrite=true"),
                (200, 201), "curl upload")
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            rec["upload_curl"]["cpu_s"] = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
            rec["upload_curl"]["emulator_cpu_s"] = cpu_seconds(emu.pid) - e0

        for step in (up_client, up_curl) if n % 2 else (up_curl, up_client):
            os.sync()  # each upload starts with nothing left to write back from the one before
            step()
        # The uploads leave 2 GiB to be written back to disk; done now, it does not run during (and slow down,
        # alike but unevenly) the downloads that follow, each of which writes 1 GiB of its own.
        t_sync = time.perf_counter()
        os.sync()
        rec["sync_after_uploads_s"] = time.perf_counter() - t_sync
        file_url = f"{url}/data/projects/{PROJECT}/resources/BENCH/files/{blob.name}"
        be._check(be.curl(file_url), (200,), "warm-up download")

        def down_client() -> None:
            e0 = cpu_seconds(emu.pid)
            r = run_worker("download", url=url, resource=f"/data/projects/{PROJECT}/resources/BENCH",
                           name=blob.name, target=str(target))
            r["emulator_cpu_s"] = cpu_seconds(emu.pid) - e0
            if target.stat().st_size != size:
                raise RuntimeError("client download has the wrong size")
            rec["download_client"] = r

        def down_curl() -> None:
            r = be._check(curl_to(target, file_url, be), (200,), "curl download")
            if target.stat().st_size != size:
                raise RuntimeError("curl download has the wrong size")
            rec["download_curl"] = r

        def down_curl_md5() -> None:
            t0 = time.perf_counter()
            out = subprocess.run(
                ["bash", "-o", "pipefail", "-c",
                 f"curl -sS -u {LOGIN}:{PASSWORD} '{file_url}' | tee '{target}' | md5sum"],
                capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - t0
            if target.stat().st_size != size:
                raise RuntimeError("curl | md5sum download has the wrong size")
            rec["download_curl_md5"] = {"seconds": seconds, "md5": out.stdout.split()[0]}

        def md5_here() -> None:
            rec["md5_mbps"] = md5_rate(data)

        steps = [down_client, down_curl, down_curl_md5, md5_here]
        k = (n - 1) % len(steps)
        for step in steps[k:] + steps[:k]:
            if step is not md5_here:
                # Each download starts right after the previous one's file is deleted and the rest written back:
                # this VM hands memory left free for ~2 s back to its host (virtio balloon free page reporting),
                # and a file written into such pages costs every writer 1-2 s more per GiB (bench_download_md5.py).
                target.unlink(missing_ok=True)
                os.sync()
            step()
    finally:
        be._stop(emu)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        target.unlink(missing_ok=True)
    return rec


def scan_and_first_call(rounds: int, scan_dir: Path, work: Path, be) -> dict:
    data_dir = work / "emulator-scan"
    log = open(work / "emulator-scan.log", "w")
    emu, url = be._start(emulator_cmd(be, data_dir), "XNAT emulator listening on", stderr=log)
    out: dict = {"scan": [], "first": []}
    try:
        time.sleep(0.3)
        from xnat_provider.client import XnatClient

        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.lower() in ("http_proxy", "https_proxy")}
        try:
            with XnatClient(url, LOGIN, PASSWORD) as c:
                t0 = time.perf_counter()
                refs = c.import_dicom(scan_dir, PROJECT, destination="archive")
                out["import_s"] = time.perf_counter() - t0
                ref = refs[0]
                scans = c.list_scans(PROJECT, ref.label)
        finally:
            os.environ.update(saved)
        scan_id = scans[0].id
        out["session"] = {"subject": ref.subject, "label": ref.label, "scan": scan_id}
        args = {"url": url, "subject": ref.subject, "label": ref.label, "scan": scan_id}
        who = ["ours", "xnatpy", "pyxnat"]
        for n in range(1, rounds + 1):
            rec: dict = {"round": n}
            k = (n - 1) % 3
            for name in who[k:] + who[:k]:
                dest = work / f"scan-{name}-{n}"
                dest.mkdir()
                r = run_worker(f"scan-{name}", dest=str(dest), cache=str(work / f"pyxnat-cache-{n}"), **args)
                shutil.rmtree(dest, ignore_errors=True)
                rec[name] = r
            ref_digests = rec["ours"]["digests"]
            for name in who:
                rec[name]["same_bytes_as_ours"] = rec[name]["digests"] == ref_digests
                rec[name]["digests"] = len(rec[name].pop("digests"))
            if not all(rec[name]["same_bytes_as_ours"] for name in who):
                raise RuntimeError(f"the three scan downloads differ: { {w: rec[w]['files'] for w in who} }")
            out["scan"].append(rec)
            first: dict = {"round": n}
            for name in who[k:] + who[:k]:
                first[name] = run_worker(f"first-{name}", url=url, cache=str(work / f"pyxnat-first-{n}"))
            out["first"].append(first)
            print(f"round {n}: scan ours {rec['ours']['seconds']:.2f} s, xnatpy {rec['xnatpy']['seconds']:.2f} s, "
                  f"pyxnat {rec['pyxnat']['seconds']:.2f} s; first call ours "
                  f"{first['ours']['connect_to_answer_s'] * 1000:.0f} ms/{first['ours']['requests']} req, xnatpy "
                  f"{first['xnatpy']['connect_to_answer_s'] * 1000:.0f} ms/{first['xnatpy']['requests']} req, "
                  f"pyxnat {first['pyxnat']['connect_to_answer_s'] * 1000:.0f} ms/{first['pyxnat']['requests']} req",
                  flush=True)
    finally:
        be._stop(emu)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


def summarise(big: list[dict], other: dict, size: int) -> dict:
    med = statistics.median
    down_c = [size / r["download_client"]["seconds"] / MB for r in big]
    down_r = [size / r["download_curl"]["time_total"] / MB for r in big]
    down_m = [size / r["download_curl_md5"]["seconds"] / MB for r in big]
    md5 = [r["md5_mbps"] for r in big]
    up_c = [size / r["upload_client"]["seconds"] / MB for r in big]
    up_r = [size / r["upload_curl"]["time_total"] / MB for r in big]
    s = {
        "md5_mbps": med(md5),
        "download": {
            "client_mbps": med(down_c), "curl_mbps": med(down_r), "curl_md5sum_mbps": med(down_m),
            "md5_mbps": med(md5),
            "ratio_to_md5": med(a / b for a, b in zip(down_c, md5, strict=True)),
            "ratio_to_curl": med(a / b for a, b in zip(down_c, down_r, strict=True)),
            "ratio_to_curl_md5sum": med(a / b for a, b in zip(down_c, down_m, strict=True)),
            "cpu_s": med(r["download_client"]["cpu_s"] for r in big),
            "peak_above_baseline_mib": max(r["download_client"]["memory"]["above_baseline_mib"] for r in big),
            "baseline_mib": med(r["download_client"]["memory"]["baseline_kib"] / 1024 for r in big),
            "requests": med(r["download_client"]["requests_sent"] for r in big),
        },
        "upload": {
            "client_mbps": med(up_c), "curl_mbps": med(up_r),
            "ratio_to_curl": med(a / b for a, b in zip(up_c, up_r, strict=True)),
            "client_cpu_s": med(r["upload_client"]["cpu_s"] for r in big),
            "emulator_cpu_s_with_client": med(r["upload_client"]["emulator_cpu_s"] for r in big),
            "curl_cpu_s": med(r["upload_curl"]["cpu_s"] for r in big),
            "emulator_cpu_s_with_curl": med(r["upload_curl"]["emulator_cpu_s"] for r in big),
            "peak_above_baseline_mib": max(r["upload_client"]["memory"]["above_baseline_mib"] for r in big),
            "baseline_mib": med(r["upload_client"]["memory"]["baseline_kib"] / 1024 for r in big),
            "requests": med(r["upload_client"]["requests_sent"] for r in big),
        },
        "scan": {}, "first_call": {},
    }
    s["scan_ratio_ours_to_xnatpy"] = med(r["ours"]["seconds"] / r["xnatpy"]["seconds"] for r in other["scan"])
    for name in ("ours", "xnatpy", "pyxnat"):
        rows = [r[name] for r in other["scan"]]
        s["scan"][name] = {"seconds": med(r["seconds"] for r in rows), "files": rows[0]["files"],
                           "bytes": rows[0]["bytes"], "same_bytes": all(r["same_bytes_as_ours"] for r in rows)}
        f = [r[name] for r in other["first"]]
        s["first_call"][name] = {
            "requests": med(r["requests"] for r in f),
            "import_s": med(r["import_s"] for r in f),
            "connect_to_answer_s": med(r["connect_to_answer_s"] for r in f),
            "nothing_to_answer_s": med(r["nothing_to_answer_s"] for r in f),
            "by_path": f[-1]["by_path"],
        }
    return s


def main(argv: list[str] | None = None) -> int:
    """The command line (a worker, or the whole benchmark): arguments, the rounds, the summary written to
    RESULTS and printed. One function, as a script's entry point reads best in one place."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print(json.dumps(worker(argv[1], json.loads(argv[2]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of the file downloaded and uploaded")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--files", type=int, default=500, help="DICOM instances in the scan")
    args = p.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is needed: apt-get update && apt-get install -y curl", file=sys.stderr)
        return 2
    os.environ["PYTHONPATH"] = NO_PROXY_ENV["PYTHONPATH"]  # for the emulators too
    sys.path.insert(0, str(ROOT))
    be = _emulator_helpers()
    blob = be.make_blob(args.size_mib)
    scan_dir = make_scan(args.files)
    size = blob.stat().st_size
    data = memoryview(blob.read_bytes())  # in memory once: the MD5 of each round hashes it, nothing else
    big = []
    load = {"before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="xnat-bench-client-", dir=DATA) as work_s:
        work = Path(work_s)
        for n in range(1, args.rounds + 1):
            rec = big_round(n, blob, work, be, data)
            print(f"round {n}: MD5 {rec['md5_mbps']:.0f} MB/s; download client "
                  f"{size / rec['download_client']['seconds'] / MB:.0f} MB/s "
                  f"(curl {size / rec['download_curl']['time_total'] / MB:.0f}, curl|md5sum "
                  f"{size / rec['download_curl_md5']['seconds'] / MB:.0f}), upload client "
                  f"{size / rec['upload_client']['seconds'] / MB:.0f} MB/s (curl "
                  f"{size / rec['upload_curl']['time_total'] / MB:.0f}); peak above baseline "
                  f"{rec['download_client']['memory']['above_baseline_mib']} / "
                  f"{rec['upload_client']['memory']['above_baseline_mib']} MiB; load {os.getloadavg()[0]:.2f}",
                  flush=True)
            big.append(rec)
        del data
        other = scan_and_first_call(args.rounds, scan_dir, work, be)
    load["after"] = os.getloadavg()
    s = summarise(big, other, size)
    d, u = s["download"], s["upload"]
    print(f"\n{args.size_mib} MiB file, {args.files}-file scan, median of {args.rounds} rounds; MB/s = 10^6 B/s; "
          f"load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after")
    print(f"{'transfer':<10} {'client':>7} {'MD5':>6} {'ratio':>6} {'curl':>6} {'ratio':>6} {'curl|md5sum':>12}"
          f" {'ratio':>6} {'peak above baseline':>20}")
    print(f"{'download':<10} {d['client_mbps']:>7.0f} {d['md5_mbps']:>6.0f} {d['ratio_to_md5']:>6.2f} "
          f"{d['curl_mbps']:>6.0f} {d['ratio_to_curl']:>6.2f} {d['curl_md5sum_mbps']:>12.0f} "
          f"{d['ratio_to_curl_md5sum']:>6.2f} {d['peak_above_baseline_mib']:>16.1f} MiB")
    print(f"{'upload':<10} {u['client_mbps']:>7.0f} {'-':>6} {'-':>6} {u['curl_mbps']:>6.0f} {u['ratio_to_curl']:>6.2f}"
          f" {'-':>12} {'-':>6} {u['peak_above_baseline_mib']:>16.1f} MiB")
    print(f"upload CPU seconds: client {u['client_cpu_s']:.2f} + emulator {u['emulator_cpu_s_with_client']:.2f}; "
          f"curl {u['curl_cpu_s']:.2f} + emulator {u['emulator_cpu_s_with_curl']:.2f} "
          f"(download: client {d['cpu_s']:.2f})")
    print(f"\n{'':<8} {'scan s':>8} {'files':>6} {'same':>5} {'requests':>9} {'import s':>9} {'connect s':>10}"
          f" {'total s':>8}")
    for name in ("ours", "xnatpy", "pyxnat"):
        sc, fc = s["scan"][name], s["first_call"][name]
        print(f"{name:<8} {sc['seconds']:>8.2f} {sc['files']:>6} {sc['same_bytes']!s:>5} {fc['requests']:>9}"
              f" {fc['import_s']:>9.2f} {fc['connect_to_answer_s']:>10.3f} {fc['nothing_to_answer_s']:>8.2f}")
    print(f"scan: ours / xnatpy = {s['scan_ratio_ours_to_xnatpy']:.2f} (median of per-round ratios)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "size_mib": args.size_mib, "rounds": args.rounds, "files": args.files,
        "machine": {**be.machine(), "load_before": load["before"], "load_after": load["after"]},
        "summary": s, "per_round": big, "scan_and_first_call": other,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")
    print(f"results: {RESULTS.relative_to(ROOT)}")
    goals = {
        "download >= 0.9 x MD5": d["ratio_to_md5"] >= 0.9,
        "upload >= 0.9 x curl": u["ratio_to_curl"] >= 0.9,
        "scan faster than xnatpy": s["scan_ratio_ours_to_xnatpy"] < 1,
        "first call in 2 requests": s["first_call"]["ours"]["requests"] == 2,
        "peak < 80 MiB above baseline": max(d["peak_above_baseline_mib"], u["peak_above_baseline_mib"]) < 80,
    }
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
