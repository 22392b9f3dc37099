"""Downloads that prove they are complete: file by file from the catalog, verified, atomic, resumable.

Each file streams to ``<name>.part`` beside its final place while its MD5 is computed; it is renamed only when
its size matches Content-Length and the listing, and its MD5 matches the catalog digest. A broken transfer
resumes with a Range request where the server honours it and restarts where it does not. A file already on
disk with the listed MD5 is skipped, so rerunning a failed download finishes it. Zip downloads are offered
too and are extracted safely (no absolute paths, no ``..``, no links).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import requests

from .errors import XnatBadInputError, XnatError, XnatTransferError
from .models import Manifest, RemoteFile
from .protocol import base_path, looks_like_html, q, raise_for_answer, result_rows
from .session import XnatSession

log = logging.getLogger("xnat_provider.client")
CHUNK = 1 << 20
BROKEN = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
          requests.exceptions.Timeout, ConnectionError)


THREADED_MD5_MIN = 8 * CHUNK  # below this a helper thread costs more than it saves


class BackgroundMD5:
    """MD5 on a helper thread fed through a bounded queue (at most 8 chunks, 8 MiB, in flight).

    On two or more cores hashing then overlaps receiving and writing (or reading and sending): a verified
    transfer runs at the rate of MD5 alone instead of MD5 plus the copy. ``hashlib`` releases the GIL while it
    hashes. Always call :meth:`hexdigest` or :meth:`close`, so that the thread ends.
    """

    def __init__(self, h: hashlib._Hash | None = None):
        self._h = h or hashlib.md5()
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="md5", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._q.get()) is not None:
            self._h.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._q.put(chunk)

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._h.hexdigest()


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_relpath(rel: str, root: object = "the target folder") -> PurePosixPath:
    """A relative path that stays inside its folder: no absolute path, drive, ``..`` or empty name."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or re.match(r"^[A-Za-z]:", rel):
        raise XnatBadInputError(f"Refusing unsafe path {rel!r}: it would be written outside {root}.")
    return pure


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths and anything that would land outside ``root``."""
    pure = check_relpath(rel, root)
    target = (root / Path(*pure.parts)).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise XnatBadInputError(f"Refusing unsafe path {rel!r}: it would be written outside {root}.")
    return target


class DownloadMixin:
    session: XnatSession

    def list_files(self, path: str) -> list[RemoteFile]:
        """Files under an archive path ending in ``/resources/{R}`` or ``/scans/{S}`` etc., from the catalog."""
        url = f"{path}/files"
        rows = result_rows(self.session.request("GET", url, params={"format": "json"}).content, "GET", url)
        files = []
        for r in rows:
            uri = r.get("URI", "")
            rel = uri.split("/files/", 1)[1] if "/files/" in uri else r.get("Name", "")
            size = int(r["Size"]) if r.get("Size", "").isdigit() else None
            files.append(RemoteFile(path=rel, size=size, digest=r.get("digest", ""), uri=uri,
                                    resource=r.get("collection", "")))
        return files

    # ---- one file ----------------------------------------------------------------------------------
    def download_file(self, remote: RemoteFile, target: str | os.PathLike[str]) -> dict:
        """Download one listed file to ``target``, verified; returns its manifest entry."""
        target = Path(target)
        same_size = target.exists() and (remote.size is None or target.stat().st_size == remote.size)
        if same_size and remote.digest and md5_of(target) == remote.digest:
            return {"path": str(target), "size": target.stat().st_size, "md5": remote.digest, "skipped": True}
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        attempts = self.session.config.retries
        for attempt in range(attempts):
            try:
                size, md5 = self._fetch(remote, part)
            except BROKEN as exc:
                if attempt + 1 >= attempts:
                    raise XnatTransferError(f"GET {remote.uri}: transfer broke {attempts} times ({type(exc).__name__});"
                                            f" {part.stat().st_size if part.exists() else 0} bytes kept in {part} "
                                            "for the next attempt", method="GET", path=remote.uri) from exc
                log.warning("Download of %s broke (%s); resuming", remote.uri, type(exc).__name__)
                continue
            problem = self._check_download(remote, size, md5)
            if problem is None:
                os.replace(part, target)
                return {"path": str(target), "size": size, "md5": md5, "skipped": False}
            part.unlink(missing_ok=True)  # wrong bytes: resuming would keep them
            if attempt + 1 >= attempts:
                raise XnatTransferError(f"GET {remote.uri}: {problem}", method="GET", path=remote.uri)
            log.warning("Download of %s failed verification (%s); downloading again", remote.uri, problem)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _check_download(remote: RemoteFile, size: int, md5: str) -> str | None:
        if remote.size is not None and size != remote.size:
            return f"got {size} bytes, the catalog lists {remote.size}"
        if remote.digest and md5 != remote.digest:
            return f"MD5 {md5} does not match the catalog digest {remote.digest}"
        return None

    def _fetch(self, remote: RemoteFile, part: Path) -> tuple[int, str]:
        """Stream into ``part``, resuming from what it holds when the server honours Range."""
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have > remote.size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else None
        resp = self.session.request("GET", remote.uri, headers=headers, stream=True, ok_statuses=(206, 416))
        with resp:
            if resp.status_code == 416:  # nothing left to fetch, or a bad range: start over
                part.unlink(missing_ok=True)
                return self._fetch(remote, part) if have else (0, hashlib.md5().hexdigest())
            resuming = resp.status_code == 206
            h = hashlib.md5()
            if resuming:
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(CHUNK), b""):
                        h.update(chunk)
            else:
                have = 0
            expected = resp.headers.get("Content-Length")
            big = expected is not None and expected.isdigit() and int(expected) >= THREADED_MD5_MIN
            digest = BackgroundMD5(h) if big else h
            got = 0
            try:
                with open(part, "ab" if resuming else "wb") as out:
                    for chunk in resp.iter_content(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        got += len(chunk)
            finally:
                if big:
                    digest.close()  # type: ignore[union-attr]
            if expected is not None and got != int(expected):
                raise requests.exceptions.ChunkedEncodingError(f"short body: {got} of {expected} bytes")
            return have + got, h.hexdigest()

    # ---- many files --------------------------------------------------------------------------------
    def download_files(self, files: Iterable[tuple[RemoteFile, Path]], workers: int | None = None) -> Manifest:
        """Download (remote, local path) pairs with a bounded pool of workers; returns the manifest."""
        pairs = list(files)
        manifest = Manifest()
        with ThreadPoolExecutor(max_workers=max(1, workers or self.session.config.workers)) as pool:
            results = list(pool.map(lambda p: self.download_file(*p), pairs))
        for (remote, _), entry in zip(pairs, results, strict=True):
            manifest.add(entry["path"], entry["size"], entry["md5"], entry["skipped"], uri=remote.uri)
        return manifest

    def download_resource(self, path: str, resource: str, dest: str | os.PathLike[str],
                          workers: int | None = None) -> Manifest:
        """All files of one resource of an archive object (``path`` from ``base_path``) into ``dest``."""
        dest = Path(dest)
        files = self.list_files(f"{path}/resources/{q(resource)}")
        return self.download_files(((f, safe_join(dest, f.path)) for f in files), workers)

    def select_scans(self, project: str, experiment: str, scans: str | Iterable[str]) -> list:
        """Scans chosen by ``ALL``, a list of IDs or types, or a regular expression (``re:T1.*``) on the type."""
        available = self.list_scans(project, experiment)  # type: ignore[attr-defined]
        if scans == "ALL":
            return available
        if isinstance(scans, str) and scans.startswith("re:"):
            rx = re.compile(scans[3:])
            chosen = [s for s in available if rx.fullmatch(s.type or "") or rx.fullmatch(s.series_description or "")]
        else:
            wanted = [scans] if isinstance(scans, str) else list(scans)
            chosen = [s for s in available if s.id in wanted or s.type in wanted]
            missing = [w for w in wanted if not any(w in (s.id, s.type) for s in available)]
            if missing:
                from .errors import XnatNotFoundError

                raise XnatNotFoundError(f"No scan {missing} in {project}/{experiment}; it has "
                                        f"{[(s.id, s.type) for s in available]}")
        return chosen

    def download_scans(self, project: str, experiment: str, dest: str | os.PathLike[str],
                       scans: str | Iterable[str] = "ALL", resource: str = "DICOM",
                       workers: int | None = None) -> Manifest:
        """Scans' resource files into ``dest/<scan id>/<resource>/...``, verified and resumable."""
        dest = Path(dest)
        pairs: list[tuple[RemoteFile, Path]] = []
        for scan in self.select_scans(project, experiment, scans):
            path = f"{base_path(project, experiment=experiment, scan=scan.id)}/resources/{q(resource)}"
            try:
                files = self.list_files(path)
            except XnatError as exc:
                if exc.status == 404:
                    continue  # this scan has no such resource
                raise
            pairs += [(f, safe_join(dest, f"{scan.id}/{resource}/{f.path}")) for f in files]
        return self.download_files(pairs, workers)

    def download_session(self, project: str, experiment: str, dest: str | os.PathLike[str],
                         assessors: bool = True, workers: int | None = None) -> Manifest:
        """Every file of a session, file by file, verified and resumable: ``dest/scans/<scan id>/<resource>/``,
        ``dest/resources/<resource>/`` (the session's own resources) and ``dest/assessors/<label>/<resource>/``."""
        dest = Path(dest)
        exp = base_path(project, experiment=experiment)
        pairs: list[tuple[RemoteFile, Path]] = []

        def add(path: str, prefix: str) -> None:
            pairs.extend((f, safe_join(dest, f"{prefix}/{f.resource}/{f.path}")) for f in self.list_files(path))

        for scan in self.list_scans(project, experiment):  # type: ignore[attr-defined]
            add(f"{exp}/scans/{q(scan.id)}", f"scans/{scan.id}")
        add(exp, "resources")
        if assessors:
            for row in self._rows(f"{exp}/assessors"):  # type: ignore[attr-defined]
                add(f"{exp}/assessors/{q(row['ID'])}", f"assessors/{row.get('label') or row['ID']}")
        return self.download_files(pairs, workers)

    # ---- zips --------------------------------------------------------------------------------------
    def download_zip(self, path: str, dest: str | os.PathLike[str], extract: bool = True) -> Manifest:
        """``GET {path}?format=zip`` to a temporary file, then (optionally) extract it safely into ``dest``."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        part = dest / ".download.zip.part"
        resp = self.session.request("GET", path, params={"format": "zip"}, stream=True)
        if "text/html" in resp.headers.get("Content-Type", ""):  # an error page answered with 200
            with resp:
                text = resp.raw.read(64 * 1024, decode_content=True).decode("utf-8", "replace")
            if looks_like_html(text):
                raise_for_answer("GET", path, resp.status_code, text, self.session.redact)
        named = re.search(r'filename="?([^";/\\]+)"?', resp.headers.get("Content-Disposition", ""))
        try:
            with resp, open(part, "wb") as out:
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
        except BROKEN as exc:
            part.unlink(missing_ok=True)
            raise XnatTransferError(f"GET {path}?format=zip: transfer broke ({type(exc).__name__})",
                                    method="GET", path=path) from exc
        if not extract:
            name = named.group(1).strip() if named else ""
            final = dest / (name if name not in ("", ".", "..") else f"{PurePosixPath(path).name}.zip")
            os.replace(part, final)
            manifest = Manifest()
            manifest.add(str(final), final.stat().st_size, md5_of(final), False)
            return manifest
        try:
            return self.extract_zip(part, dest)
        finally:
            part.unlink(missing_ok=True)

    @staticmethod
    def extract_zip(archive: Path, dest: Path) -> Manifest:
        manifest = Manifest()
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
                for info in infos:  # check every name before writing anything
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise XnatBadInputError(f"Refusing link {info.filename!r} in the downloaded zip.")
                    safe_join(dest, info.filename)
                for info in infos:
                    target = safe_join(dest, info.filename)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(target.name + ".part")
                    h = hashlib.md5()
                    with zf.open(info) as src, open(tmp, "wb") as out:
                        for chunk in iter(lambda src=src: src.read(CHUNK), b""):
                            out.write(chunk)
                            h.update(chunk)
                    os.replace(tmp, target)
                    manifest.add(str(target), info.file_size, h.hexdigest(), False)
        except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise XnatTransferError(f"The downloaded zip is damaged: {exc}") from exc
        return manifest


