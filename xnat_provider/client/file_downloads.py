"""Files downloaded one by one from the catalog: verified, atomic, resumable.

Each file streams to ``<name>.part`` beside its final place while its MD5 is computed (:func:`~.hashed_stream.receive`);
it is renamed only when its size matches Content-Length and the listing, and its MD5 matches the catalog digest. A
broken transfer resumes with a Range request where the server honours it and restarts where it does not
(:class:`PartState` carries the MD5 of what the part holds from one attempt to the next, so resuming does not read
it again). A file already on disk with the listed MD5 is skipped, so rerunning a failed download finishes it.

:class:`FileDownloadMixin` is this half of :class:`~.downloads.DownloadMixin`; whole scans, sessions and zips build
on it there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .destinations import Destinations, Joiner, check_destination, on_storage, storage_module
from .errors import XnatAuthError, XnatServerError, XnatTransferError
from .hashed_stream import BROKEN, Body, catalog_mismatch, hash_file, md5_of, receive
from .models import Manifest, RemoteFile
from .part_file import DIRECT_MIN, PartFile
from .progress import NO_PROGRESS, Progress
from .protocol import q, result_rows
from .transport import XnatTransport, chained, redacted_cause

log = logging.getLogger("xnat_provider.client")
T = TypeVar("T")
Pair = tuple[RemoteFile, Path]


#: Failures that are the server's or the login's, not one file's: every other file would fail alike (after its own
#: retries and backoff), so the download stops at once instead of paying them file by file.
WHOLE_DOWNLOAD = (XnatAuthError, XnatServerError)


def each_file(download: Callable[[T], dict], items: list[T], limit: int) -> list[dict]:
    """``download`` applied to every item, ``limit`` at a time; the results in the order of ``items``.

    A file that fails on its own (its bytes do not match the catalog, it is gone) does not stop the others: every
    item is tried, so that a retry finds every file that could be verified already in place, and then the first
    failure in the order of ``items`` is raised. A failure of the whole download (:data:`WHOLE_DOWNLOAD`: XNAT
    failing, the login refused) is raised at once; files not yet started are not tried."""
    if limit <= 1:
        return _each_in_turn(download, items)
    stop = threading.Event()  # set by the first whole-download failure: no worker starts another file

    def guarded(item: T) -> dict | None:
        if stop.is_set():
            return None
        try:
            return download(item)
        except WHOLE_DOWNLOAD:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=limit) as pool:
        futures = [pool.submit(guarded, item) for item in items]
    # every file tried or skipped: a whole-download failure first, else the first file's failure in order
    errors = [f.exception() for f in futures if f.exception() is not None]
    for error in [e for e in errors if isinstance(e, WHOLE_DOWNLOAD)] or errors:
        raise error
    return [f.result() for f in futures]  # type: ignore[misc]  (None only after a failure, raised above)


def _each_in_turn(download: Callable[[T], dict], items: list[T]) -> list[dict]:
    """:func:`each_file` with one worker: no thread."""
    results: list[dict] = []
    first: Exception | None = None
    for item in items:
        try:
            results.append(download(item))
        except WHOLE_DOWNLOAD:
            raise
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first
    return results


class PartState:
    """What a download knows of its ``.part`` between attempts: ``h`` is the MD5 of exactly its first ``have``
    bytes (None: not known, the part is read again to resume), ``counted`` the bytes of it counted as done."""

    def __init__(self) -> None:
        self.have = 0
        self.h: Any = None
        self.counted = 0

    def wrote(self, n: int) -> None:
        self.have += n
        self.counted += n

    def resume(self, part: Path, have: int, progress: Progress) -> Any:
        """The MD5 to continue from ``have`` bytes: the one kept from the attempt that wrote them, or the part's
        bytes hashed now (a part left by an earlier run, counted as done from now on)."""
        if self.h is None or self.have != have:
            self.h = hash_file(part, hashlib.md5())
            progress.credit(have - self.counted)
            self.have = self.counted = have
        return self.h

    def restart(self, progress: Progress) -> None:
        progress.credit(-self.counted)
        self.have = self.counted = 0
        self.h = None


class FileDownloadMixin:
    """Listing a resource's files and downloading them one by one (each verified, atomic, resumable), to a local
    folder or, handed to :mod:`.storage`, to object storage."""

    transport: XnatTransport

    def list_files(self, path: str) -> list[RemoteFile]:
        """Files under an archive path ending in ``/resources/{R}`` or ``/scans/{S}`` etc., from the catalog."""
        url = f"{path}/files"
        rows = result_rows(self.transport.request("GET", url, params={"format": "json"}).content, "GET", url)
        files = []
        for r in rows:
            uri = r.get("URI", "")
            rel = uri.split("/files/", 1)[1] if "/files/" in uri else r.get("Name", "")
            size = int(r["Size"]) if r.get("Size", "").isdigit() else None
            files.append(RemoteFile(path=rel, size=size, digest=r.get("digest", ""), uri=uri,
                                    resource=r.get("collection", "")))
        return files

    # ---- progress ----------------------------------------------------------------------------------
    def _progress(self, what: str, pairs: list[tuple[RemoteFile, Any]]) -> Progress:
        """The progress of one call over ``pairs`` (see :mod:`.progress`); totals from the listing."""
        sizes = [f.size for f, _ in pairs]
        total = sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else None
        return Progress(what, total, len(pairs), interval=self.transport.config.progress_interval)

    @staticmethod
    def _where(targets: list[Any]) -> str:
        """The folder the targets share, for the progress lines (one name, not thousands)."""
        try:
            return os.path.commonpath([str(t) for t in targets]) if len(targets) > 1 else str(targets[0])
        except ValueError:  # mixed: relative and absolute, or several drives
            return f"{len(targets)} places"

    # ---- one file ----------------------------------------------------------------------------------
    def download_file(self, remote: RemoteFile, target: str | os.PathLike[str]) -> dict:
        """Download one listed file to ``target``, verified; returns its manifest entry.

        :raises XnatBadInputError: before any request, when ``target`` is a folder or its folder cannot be made
            or written (a file in the way). ``target`` may be on object storage (see :mod:`.storage`)."""
        if on_storage(target):
            return storage_module().download_file_to_storage(self, remote, target)  # type: ignore[no-any-return]
        target = Path(target)
        Destinations().files([target])
        progress = self._progress(f"Download of {target}", [(remote, target)])
        entry = self._download_one(remote, target, progress)
        progress.finish()
        return entry

    def _download_one(self, remote: RemoteFile, target: Path, progress: Progress = NO_PROGRESS) -> dict:
        """One file: skipped if already there verified; else fetched into its ``.part`` (resumed after a break,
        fetched whole again after wrong bytes) up to the client's ``retries`` times, and renamed once verified."""
        same_size = target.exists() and (remote.size is None or target.stat().st_size == remote.size)
        if same_size and remote.digest and md5_of(target) == remote.digest:
            size = target.stat().st_size
            progress.file_done(skipped_bytes=size)
            return {"path": str(target), "size": size, "md5": remote.digest, "skipped": True}
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        state = PartState()
        attempts = self.transport.config.retries
        for attempt in range(attempts):
            broke: XnatTransferError | None = None
            try:
                size, md5 = self._fetch(remote, part, state, progress)
            except BROKEN as exc:
                if attempt + 1 >= attempts:
                    where = self.transport.redact(remote.uri)
                    broke = chained(XnatTransferError(  # type: ignore[assignment]
                        f"GET {where}: transfer broke {attempts} times ({type(exc).__name__}); "
                        f"{part.stat().st_size if part.exists() else 0} bytes kept in {part} for the next attempt",
                        method="GET", path=where), redacted_cause(exc, self.transport.redact))
                else:
                    log.warning("Download of %s broke (%s); resuming", remote.uri, type(exc).__name__)
                    continue
            if broke is not None:
                raise broke  # outside the except block: the library's exception is not its context
            problem = catalog_mismatch(remote, size, md5)
            if problem is None:
                os.replace(part, target)
                progress.file_done()
                return {"path": str(target), "size": size, "md5": md5, "skipped": False}
            part.unlink(missing_ok=True)  # wrong bytes: resuming would keep them
            state.restart(progress)
            if attempt + 1 >= attempts:
                raise XnatTransferError(f"GET {remote.uri}: {problem}", method="GET", path=remote.uri)
            log.warning("Download of %s failed verification (%s); downloading again", remote.uri, problem)
        raise AssertionError("unreachable")  # pragma: no cover


    def _fetch(self, remote: RemoteFile, part: Path, state: PartState,
               progress: Progress = NO_PROGRESS) -> tuple[int, str]:
        """Stream into ``part``, resuming from what it holds when the server honours Range."""
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have > remote.size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else None
        resp = self.transport.request("GET", remote.uri, headers=headers, stream=True, ok_statuses=(206, 416))
        with resp:
            if resp.status_code == 416:  # nothing left to fetch, or a bad range: start over
                part.unlink(missing_ok=True)
                state.restart(progress)
                return self._fetch(remote, part, state, progress) if have else (0, hashlib.md5().hexdigest())
            if resp.status_code == 206 and have:
                h = state.resume(part, have, progress)
            else:  # the whole file: whatever the part held is replaced
                state.restart(progress)
                have, h = 0, hashlib.md5()
                state.h = h
            body = Body(resp)
            big = body.length is not None and have + body.length >= DIRECT_MIN
            with PartFile(part, have, direct=big and self.transport.config.direct_io) as out:

                def write(view: memoryview) -> None:
                    out.write(view)
                    state.wrote(len(view))

                got = receive(body, write, h, body.length, progress, aligned=out.direct)
            return have + got, h.hexdigest()

    # ---- many files --------------------------------------------------------------------------------
    def download_files(self, files: Iterable[tuple[RemoteFile, Path]], workers: int | None = None) -> Manifest:
        """Download (remote, local path) pairs with a bounded pool of workers; returns the manifest.

        A target may be on object storage (see :mod:`.storage`)."""
        files = list(files)
        if any(on_storage(t) for _, t in files):
            return storage_module().download_to_storage(self, files, workers)  # type: ignore[no-any-return]
        pairs = [(remote, Path(target)) for remote, target in files]
        Destinations().files(t for _, t in pairs)  # every place, before the first byte moves
        if not pairs:
            return Manifest()
        progress = self._progress(f"Download to {self._where([t for _, t in pairs])}", pairs)
        manifest = self._download_each(pairs, workers, progress)
        progress.finish()
        return manifest

    def _download_each(self, pairs: list[Pair], workers: int | None, progress: Progress) -> Manifest:
        limit = max(1, min(len(pairs), workers or self.transport.config.workers))
        results = each_file(lambda p: self._download_one(p[0], p[1], progress), pairs, limit)
        manifest = Manifest()
        for (remote, _), entry in zip(pairs, results, strict=True):
            manifest.add(entry["path"], entry["size"], entry["md5"], entry["skipped"], uri=remote.uri)
        return manifest

    def download_resource(self, path: str, resource: str, dest: str | os.PathLike[str],
                          workers: int | None = None) -> Manifest:
        """All files of one resource of an archive object (``path`` from ``base_path``) into ``dest``."""
        dest = check_destination(dest)
        files = self.list_files(f"{path}/resources/{q(resource)}")
        joiner = Joiner(dest)
        return self.download_files(((f, joiner.join(f.path)) for f in files), workers)

