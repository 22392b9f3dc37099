"""Downloads that prove they are complete: file by file from the catalog, verified, atomic, resumable.

Each file streams to ``<name>.part`` beside its final place while its MD5 is computed; it is renamed only when
its size matches Content-Length and the listing, and its MD5 matches the catalog digest. A broken transfer
resumes with a Range request where the server honours it and restarts where it does not. A file already on
disk with the listed MD5 is skipped, so rerunning a failed download finishes it. Zip downloads are offered
too and are extracted safely (no absolute paths, no ``..``, no links).

Scans with many small files take a zip fast path (:meth:`DownloadMixin.download_scans`,
:meth:`DownloadMixin.download_session`): when none of a scan resource's files is on disk yet, the resource comes
as one zip, and each entry the catalog lists is extracted to ``<name>.part`` and renamed only once its size and
MD5 match the listing. Whatever the zip did not deliver verified (a missing entry, wrong bytes, a broken
transfer) is then fetched file by file, so the result, and the manifest, are those of the per-file path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

import requests
import urllib3

from .errors import XnatBadInputError, XnatError, XnatNotFoundError, XnatTransferError
from .models import Experiment, Manifest, RemoteFile, Scan
from .protocol import looks_like_html, q, raise_for_answer, result_rows
from .session import XnatSession, chained, redacted_cause

log = logging.getLogger("xnat_provider.client")
CHUNK = 1 << 20
BROKEN = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
          requests.exceptions.Timeout, requests.exceptions.ContentDecodingError, urllib3.exceptions.HTTPError,
          ConnectionError)


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


class _Destinations:
    """Checks that downloads can land where they are asked to, before anything is requested or written:
    :class:`XnatBadInputError` naming the file in the way (a destination that is a file, or under one; a file's
    place taken by a folder) or the folder that cannot be written, instead of a raw ``OSError`` half-way through.
    Folders already found fine are not looked at again."""

    def __init__(self) -> None:
        self._fine: set[Path] = set()

    def folder(self, dest: Path, what: str = "Download destination") -> None:
        """``dest`` is, or can be created as, a folder this process can write in."""
        path = Path(os.path.abspath(dest))
        nearest = next(p for p in (path, *path.parents) if os.path.lexists(p))  # the root always exists
        if nearest in self._fine:
            return
        if not nearest.is_dir():
            kind = ("a broken link" if not nearest.exists() else "a file" if nearest.is_file()
                    else "not a folder (a special file)")
            where = f"is {kind}" if nearest == path else f"is under {nearest}, which is {kind}"
            raise XnatBadInputError(f"{what} {dest} {where}: nothing was downloaded.")
        try:
            with tempfile.TemporaryFile(dir=nearest):
                pass
        except OSError as exc:
            raise XnatBadInputError(f"{what} {dest} cannot be written: no file can be created in {nearest} "
                                    f"({exc.strerror or type(exc).__name__}): nothing was downloaded.") from None
        self._fine.add(nearest)

    def files(self, targets: Iterable[Path]) -> None:
        """Each target's place is free of a folder, and its folder can be made and written in."""
        for target in targets:
            if target.is_dir():
                raise XnatBadInputError(f"Cannot download to {target}: a folder is in the way (it would be replaced "
                                        "by a file): nothing was downloaded.")
            self.folder(target.parent, f"Cannot download {target.name}: its folder")


def on_storage(target: object) -> bool:
    """Whether ``target`` is on an fsspec file system (an ``ObjectStoragePath``: ``.fs`` and ``.path``): such
    targets go to :mod:`.storage`, which builds on this module, so it is imported on that branch only."""
    return not isinstance(target, (str, os.PathLike)) and (hasattr(type(target), "fs") or
                                                             "fs" in getattr(target, "__dict__", {}))


def _storage() -> Any:
    from . import storage

    return storage


def check_destination(dest: str | os.PathLike[str]) -> Path:
    """``dest`` as a Path, once checked to be (or to be creatable as) a writable folder; see :class:`_Destinations`.
    On object storage, a :class:`~.storage.FsPath` checked by :func:`.storage.check_destination`."""
    if on_storage(dest):
        return _storage().check_destination(dest)  # type: ignore[return-value]
    _Destinations().folder(Path(dest))
    return Path(dest)


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths and anything that would land outside ``root``."""
    if not isinstance(root, Path):  # a storage folder, from check_destination
        return _storage().join_checked(root, rel)  # type: ignore[return-value]
    pure = check_relpath(rel, root)
    target = (root / Path(*pure.parts)).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise XnatBadInputError(f"Refusing unsafe path {rel!r}: it would be written outside {root}.")
    return target


Pair = tuple[RemoteFile, Path]
# What reading one zip entry can raise when the entry (not the whole zip) is damaged or unsupported.
ENTRY_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError)


def is_link(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


class DownloadMixin:
    session: XnatSession
    #: The zip fast path of :meth:`download_scans` and :meth:`download_session` is taken for a scan resource of
    #: at least ``ZIP_MIN_FILES`` files whose mean size is below ``ZIP_MAX_MEAN_SIZE`` bytes, when none of its
    #: files (nor a ``.part`` of one) is on disk yet; ``ZIP_FAST_PATH = False`` turns it off.
    ZIP_FAST_PATH: bool = True
    ZIP_MIN_FILES: int = 20
    ZIP_MAX_MEAN_SIZE: int = 2 * CHUNK

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
        """Download one listed file to ``target``, verified; returns its manifest entry.

        :raises XnatBadInputError: before any request, when ``target`` is a folder or its folder cannot be made
            or written (a file in the way). ``target`` may be on object storage (see :mod:`.storage`)."""
        if on_storage(target):
            return _storage().download_file_to_storage(self, remote, target)
        target = Path(target)
        _Destinations().files([target])
        return self._download_one(remote, target)

    def _download_one(self, remote: RemoteFile, target: Path) -> dict:
        same_size = target.exists() and (remote.size is None or target.stat().st_size == remote.size)
        if same_size and remote.digest and md5_of(target) == remote.digest:
            return {"path": str(target), "size": target.stat().st_size, "md5": remote.digest, "skipped": True}
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        attempts = self.session.config.retries
        for attempt in range(attempts):
            broke: XnatTransferError | None = None
            try:
                size, md5 = self._fetch(remote, part)
            except BROKEN as exc:
                if attempt + 1 >= attempts:
                    where = self.session.redact(remote.uri)
                    broke = chained(XnatTransferError(  # type: ignore[assignment]
                        f"GET {where}: transfer broke {attempts} times ({type(exc).__name__}); "
                        f"{part.stat().st_size if part.exists() else 0} bytes kept in {part} for the next attempt",
                        method="GET", path=where), redacted_cause(exc, self.session.redact))
                else:
                    log.warning("Download of %s broke (%s); resuming", remote.uri, type(exc).__name__)
                    continue
            if broke is not None:
                raise broke  # outside the except block: the library's exception is not its context
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
        """Download (remote, local path) pairs with a bounded pool of workers; returns the manifest.

        A target may be on object storage (see :mod:`.storage`)."""
        files = list(files)
        if any(on_storage(t) for _, t in files):
            return _storage().download_to_storage(self, files, workers)
        pairs = [(remote, Path(target)) for remote, target in files]
        _Destinations().files(t for _, t in pairs)  # every place, before the first byte moves
        manifest = Manifest()
        with ThreadPoolExecutor(max_workers=max(1, workers or self.session.config.workers)) as pool:
            results = list(pool.map(lambda p: self._download_one(*p), pairs))
        for (remote, _), entry in zip(pairs, results, strict=True):
            manifest.add(entry["path"], entry["size"], entry["md5"], entry["skipped"], uri=remote.uri)
        return manifest

    def download_resource(self, path: str, resource: str, dest: str | os.PathLike[str],
                          workers: int | None = None) -> Manifest:
        """All files of one resource of an archive object (``path`` from ``base_path``) into ``dest``."""
        dest = check_destination(dest)
        files = self.list_files(f"{path}/resources/{q(resource)}")
        return self.download_files(((f, safe_join(dest, f.path)) for f in files), workers)

    def select_scans(self, project: str, experiment: str | Experiment, scans: str | Iterable[str],
                     experiment_path: str | None = None) -> list[Scan]:
        """Scans chosen by ``ALL``, a list of IDs or types, or a regular expression (``re:T1.*``) on the type.

        ``experiment_path`` (from :meth:`experiment_path`) saves looking the experiment up again."""
        exp_path = experiment_path or self.experiment_path(project, experiment)  # type: ignore[attr-defined]
        available = self.scans_at(exp_path)  # type: ignore[attr-defined]
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
                label = experiment.label if isinstance(experiment, Experiment) else experiment
                raise XnatNotFoundError(f"No scan {missing} in {project}/{label}; it has "
                                        f"{[(s.id, s.type) for s in available]}")
        return chosen

    def download_scans(self, project: str, experiment: str | Experiment, dest: str | os.PathLike[str],
                       scans: str | Iterable[str] = "ALL", resource: str = "DICOM", *, subject: str | None = None,
                       workers: int | None = None) -> Manifest:
        """Scans' resource files into ``dest/<scan id>/<resource>/...``, verified and resumable.

        ``experiment`` is a label or ID within ``project`` (or an :class:`Experiment`); ``subject``, when known,
        saves the lookup of the experiment's ID (see :meth:`experiment_path`). A scan resource of many small files
        none of which is on disk yet comes as one zip (see :meth:`_download_pairs`); everything else, and
        whatever the zip did not deliver verified, file by file.
        """
        dest = check_destination(dest)
        exp_path = self.experiment_path(project, experiment, subject)  # type: ignore[attr-defined]
        pairs: list[Pair] = []
        zips: list[tuple[str, list[int]]] = []
        for scan in self.select_scans(project, experiment, scans, exp_path):
            path = f"{exp_path}/scans/{q(scan.id)}/resources/{q(resource)}"
            try:
                files = self.list_files(path)
            except XnatError as exc:
                if exc.status == 404:
                    continue  # this scan has no such resource
                raise
            zips.append((path, list(range(len(pairs), len(pairs) + len(files)))))
            pairs += [(f, safe_join(dest, f"{scan.id}/{resource}/{f.path}")) for f in files]
        return self._download_pairs(pairs, zips, workers)

    def download_session(self, project: str, experiment: str | Experiment, dest: str | os.PathLike[str],
                         assessors: bool = True, *, subject: str | None = None,
                         workers: int | None = None) -> Manifest:
        """Every file of a session, verified and resumable: ``dest/scans/<scan id>/<resource>/``,
        ``dest/resources/<resource>/`` (the session's own resources) and ``dest/assessors/<label>/<resource>/``.

        Scan resources may come as one zip each, as in :meth:`download_scans`; the rest goes file by file."""
        dest = check_destination(dest)
        exp = self.experiment_path(project, experiment, subject)  # type: ignore[attr-defined]
        pairs: list[Pair] = []
        zips: list[tuple[str, list[int]]] = []

        def add(path: str, prefix: str) -> None:
            pairs.extend((f, safe_join(dest, f"{prefix}/{f.resource}/{f.path}")) for f in self.list_files(path))

        for scan in self.scans_at(exp):  # type: ignore[attr-defined]
            first = len(pairs)
            add(f"{exp}/scans/{q(scan.id)}", f"scans/{scan.id}")
            by_resource: dict[str, list[int]] = {}
            for i in range(first, len(pairs)):
                by_resource.setdefault(pairs[i][0].resource, []).append(i)
            zips += [(f"{exp}/scans/{q(scan.id)}/resources/{q(label)}", indices)
                     for label, indices in by_resource.items() if label]
        add(exp, "resources")
        if assessors:
            for row in self._rows(f"{exp}/assessors"):  # type: ignore[attr-defined]
                add(f"{exp}/assessors/{q(row['ID'])}", f"assessors/{row.get('label') or row['ID']}")
        return self._download_pairs(pairs, zips, workers)

    # ---- the zip fast path -------------------------------------------------------------------------
    def _download_pairs(self, pairs: list[Pair], zips: list[tuple[str, list[int]]],
                        workers: int | None) -> Manifest:
        """Download (remote, local path) pairs; each group in ``zips`` (a resource path, indices into ``pairs``)
        may come as one zip.

        Each eligible group (:meth:`_zip_eligible`) is fetched as ``GET {path}/files?format=zip`` and extracted
        by :meth:`_zip_fast_path`, which keeps only entries whose size and MD5 match the listing. Every pair it
        did not deliver goes through :meth:`download_files` (skip, resume, retry, verify), so the manifest, in
        the order of ``pairs``, is the one the per-file path gives. Pairs on object storage go file by file
        (a zip is read from its end: it would need a whole local copy).
        """
        if any(on_storage(t) for _, t in pairs):
            return _storage().download_to_storage(self, pairs, workers, probe=False)  # check_destination probed
        _Destinations().files(t for _, t in pairs)  # before the first request for a file
        chosen = [(path, idx) for path, idx in zips if self._zip_eligible([pairs[i] for i in idx])]
        from_zip: dict[int, dict] = {}  # index into pairs -> manifest entry
        if chosen:
            limit = max(1, min(len(chosen), workers or self.session.config.workers))
            with ThreadPoolExecutor(max_workers=limit) as pool:
                results = pool.map(lambda z: self._zip_fast_path(z[0], [pairs[i] for i in z[1]]), chosen)
                for (_, idx), got in zip(chosen, results, strict=True):
                    from_zip.update((i, entry) for i, entry in zip(idx, got, strict=True) if entry is not None)
        rest = [p for i, p in enumerate(pairs) if i not in from_zip]
        per_file = iter(self.download_files(rest, workers).files if rest else [])
        manifest = Manifest()
        for i in range(len(pairs)):
            manifest.add(**(from_zip[i] if i in from_zip else next(per_file)))
        return manifest

    def _zip_eligible(self, pairs: list[Pair]) -> bool:
        """Many small files, each verifiable (size and digest listed), none on disk yet (nor a ``.part``).

        A rerun or a resumed download keeps the per-file path: it skips verified files and resumes parts."""
        if not self.ZIP_FAST_PATH or not pairs or len(pairs) < self.ZIP_MIN_FILES:
            return False
        if any(f.size is None or not f.digest for f, _ in pairs) or len({t for _, t in pairs}) != len(pairs):
            return False
        if sum(f.size or 0 for f, _ in pairs) / len(pairs) >= self.ZIP_MAX_MEAN_SIZE:
            return False
        return not any(os.path.lexists(t) or os.path.lexists(t.with_name(t.name + ".part")) for _, t in pairs)

    def _zip_fast_path(self, path: str, pairs: list[Pair]) -> list[dict | None]:
        """``GET {path}/files?format=zip`` into a temporary file beside the targets, then extract the listed files.

        Returns one manifest entry per pair, or None for a pair the zip did not deliver verified (that file is
        then fetched on its own). Never raises for a transfer problem: a failed or broken zip download just
        leaves every file to the per-file path. The temporary zip is always removed.
        """
        out: list[dict | None] = [None] * len(pairs)
        root = Path(os.path.commonpath([str(t.parent) for _, t in pairs]))
        root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".xnat-", suffix=".zip.part", dir=root)
        os.close(fd)
        archive = Path(name)
        url = f"{path}/files"
        shown = self.session.redact(url)
        try:
            try:
                self._stream_zip(url, archive)
            except XnatError as exc:
                log.warning("Zip download of %s failed (%s); downloading its %d files one by one", shown,
                            self.session.redact(str(exc))[:300], len(pairs))
                return out
            labels = {f.resource for f, _ in pairs if f.resource} | {unquote(path.rstrip("/").rsplit("/", 1)[-1])}
            self._extract_listed(archive, pairs, [f"/resources/{label}/files/" for label in labels], out, shown)
        finally:
            archive.unlink(missing_ok=True)
        return out

    def _extract_listed(self, archive: Path, pairs: list[Pair], markers: list[str], out: list[dict | None],
                        shown: str) -> None:
        """Extract the zip entries the listing names into ``out``; refuse the rest and say which and why.

        An entry maps to the listed file whose path is the part of its name after ``/resources/{label}/files/``
        (XNAT's layout: ``{session}/scans/{id}-{type}/resources/{label}/files/{path}``). Links, absolute paths,
        ``..`` and entries the listing does not name are never written; a listed file is written only at the
        place the per-file path would use, through ``<name>.part``, renamed once size and MD5 match."""
        by_path = {f.path: i for i, (f, _) in enumerate(pairs)}
        refused: list[str] = []
        failed: dict[int, str] = {}
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
            log.warning("The zip of %s is damaged (%s); downloading its %d files one by one", shown, exc, len(pairs))
            return
        with zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if is_link(info):
                    refused.append(f"{info.filename!r} (a link)")
                    continue
                try:
                    check_relpath(info.filename)
                except XnatBadInputError:
                    refused.append(f"{info.filename!r} (an unsafe path: absolute, a drive or '..')")
                    continue
                named = "/" + info.filename.replace("\\", "/")
                rel = next((named.split(m, 1)[1] for m in markers if m in named), None)
                i = by_path.get(rel) if rel is not None else None
                if i is None:
                    refused.append(f"{info.filename!r} (not in the catalog listing)")
                    continue
                if out[i] is not None or i in failed:
                    refused.append(f"{info.filename!r} (a second entry for {rel!r})")
                    continue
                remote, target = pairs[i]
                if info.file_size != remote.size:
                    failed[i] = f"the zip holds {info.file_size} bytes, the catalog lists {remote.size}"
                    continue
                out[i], problem = self._extract_entry(zf, info, remote, target)
                if problem is not None:
                    failed[i] = problem

        def some(items: list[str]) -> str:
            return ", ".join(items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "")

        if refused:
            log.warning("Zip of %s: ignored %d entries: %s", shown, len(refused), some(refused))
        if failed:
            log.warning("Zip of %s: %d files failed verification and will be downloaded one by one: %s", shown,
                        len(failed), some([f"{pairs[i][0].path} ({why})" for i, why in failed.items()]))
        missing = [pairs[i][0].path for i, entry in enumerate(out) if entry is None and i not in failed]
        if missing:
            log.warning("Zip of %s: %d listed files are missing from it and will be downloaded one by one: %s",
                        shown, len(missing), some(missing))

    def _extract_entry(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, remote: RemoteFile,
                       target: Path) -> tuple[dict | None, str | None]:
        """One entry to ``<target>.part``, renamed to ``target`` only if its size and MD5 match the listing."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        h = hashlib.md5()
        size = 0
        try:
            with zf.open(info) as src, open(part, "wb") as dst:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    dst.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
        except ENTRY_ERRORS as exc:
            part.unlink(missing_ok=True)
            return None, f"unreadable in the zip: {type(exc).__name__}: {exc}"
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        md5 = h.hexdigest()
        problem = self._check_download(remote, size, md5)
        if problem is not None:
            part.unlink(missing_ok=True)
            return None, problem
        os.replace(part, target)
        return {"path": str(target), "size": size, "md5": md5, "skipped": False, "uri": remote.uri}, None

    # ---- zips --------------------------------------------------------------------------------------
    def download_zip(self, path: str, dest: str | os.PathLike[str], extract: bool = True) -> Manifest:
        """``GET {path}?format=zip`` to a temporary file, then (optionally) extract it safely into a local ``dest``
        (to object storage, use :meth:`download_resource` or :meth:`download_session`)."""
        dest = check_destination(dest)
        if not isinstance(dest, Path):
            raise XnatBadInputError(f"download_zip needs a local folder, not {dest}: nothing was downloaded.")
        dest.mkdir(parents=True, exist_ok=True)
        part = dest / ".download.zip.part"
        named = self._stream_zip(path, part)
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

    def _stream_zip(self, path: str, part: Path) -> re.Match[str] | None:
        """Stream ``GET {path}?format=zip`` into ``part``; returns the Content-Disposition file name match.

        An HTML error page answered with 200 raises its typed error; a broken transfer removes ``part`` and
        raises :class:`XnatTransferError`."""
        resp = self.session.request("GET", path, params={"format": "zip"}, stream=True)
        head = b""
        broke: XnatError | None = None
        try:
            if "text/html" in resp.headers.get("Content-Type", ""):  # perhaps an error page answered with 200
                head = resp.raw.read(64 * 1024, decode_content=True)
                text = head.decode("utf-8", "replace")
                if looks_like_html(text):
                    resp.close()
                    raise_for_answer("GET", path, resp.status_code, text, self.session.redact)
            with resp, open(part, "wb") as out:
                out.write(head)  # bytes already read to look for an error page belong to the zip
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
        except BROKEN as exc:
            resp.close()
            part.unlink(missing_ok=True)
            where = self.session.redact(path)
            broke = chained(XnatTransferError(f"GET {where}?format=zip: transfer broke ({type(exc).__name__})",
                                              method="GET", path=where), redacted_cause(exc, self.session.redact))
        if broke is not None:
            raise broke  # outside the except block: the library's exception is not its context
        return re.search(r'filename="?([^";/\\]+)"?', resp.headers.get("Content-Disposition", ""))

    @staticmethod
    def extract_zip(archive: Path, dest: Path) -> Manifest:
        manifest = Manifest()
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
                for info in infos:  # check every name before writing anything
                    if is_link(info):
                        raise XnatBadInputError(f"Refusing link {info.filename!r} in the downloaded zip.")
                    safe_join(dest, info.filename)
                _Destinations().files(safe_join(dest, info.filename) for info in infos)
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


