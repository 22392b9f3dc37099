"""Downloads that prove they are complete: file by file from the catalog, verified, atomic, resumable.

Each file streams to ``<name>.part`` beside its final place while its MD5 is computed; it is renamed only when
its size matches Content-Length and the listing, and its MD5 matches the catalog digest. A broken transfer
resumes with a Range request where the server honours it and restarts where it does not. A file already on
disk with the listed MD5 is skipped, so rerunning a failed download finishes it. Zip downloads are offered
too and are extracted safely (no absolute paths, no ``..``, no links).

A big file runs at the rate of MD5 alone (:func:`receive`): the calling thread reads the socket straight into a
small pool of recycled buffers (``readinto``, no copy in between) and writes each buffer, while a helper thread
hashes them; memory is the pool, whatever the file's size.

Scans with many small files take a zip fast path (:meth:`DownloadMixin.download_scans`,
:meth:`DownloadMixin.download_session`): when none of a scan resource's files is on disk yet, the resource comes
as one zip, read as it arrives (:mod:`.zip_stream`), and each entry the catalog lists is extracted (to
``<name>.part``, or into a hidden folder renamed into place whole when the folder is new) while the rest is still
in transit; once the zip has ended well, what matches the listing (size and MD5) is renamed. Whatever the zip
did not deliver verified (a missing entry, wrong bytes, a broken transfer) is then fetched file by file, so the
result, and the manifest, are those of the per-file path.

Long transfers log their progress (:mod:`.progress`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

import requests
import urllib3

from .errors import XnatBadInputError, XnatError, XnatNotFoundError, XnatTransferError
from .models import Experiment, Manifest, RemoteFile, Scan
from .progress import NO_PROGRESS, Progress
from .protocol import looks_like_html, q, raise_for_answer, result_rows
from .transport import XnatTransport, chained, redacted_cause
from .zip_stream import ForwardZip, ZipStreamError

log = logging.getLogger("xnat_provider.client")
CHUNK = 1 << 20
BROKEN = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
          requests.exceptions.Timeout, requests.exceptions.ContentDecodingError, urllib3.exceptions.HTTPError,
          ConnectionError)

# The receive pipeline (see receive): buffers small enough to stay in the CPU's cache from the socket through the
# file to MD5 (measured: 128-512 KiB run at the MD5 rate, 1 MiB at 0.5-0.8 of it), and few enough to bound memory.
BUFFER = 256 * 1024
BUFFERS = 16  # 4 MiB in flight at most
THREADED_MD5_MIN = 8 * CHUNK  # below this a helper thread costs more than it saves


class Body:
    """A response body read into the caller's buffers (``readinto``), with the transport's errors as ``requests``
    errors (the downloads' :data:`BROKEN`).

    Where urllib3 would only pass the bytes through (no Content-Encoding), they are read from ``http.client``'s
    response under it, straight from the socket into the buffer; otherwise through urllib3 (which decodes). A body
    read to its end hands its connection back to the pool (:meth:`release`)."""

    def __init__(self, resp: requests.Response, head: bytes = b""):
        self._resp = resp
        raw = resp.raw
        fp = getattr(raw, "_fp", None)
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        untouched = getattr(raw, "_fp_bytes_read", None) == 0 and not len(getattr(raw, "_decoded_buffer", b""))
        self._fp = fp if isinstance(fp, http.client.HTTPResponse) and encoding in ("", "identity") and untouched \
            else None
        self._head = memoryview(head)
        length = resp.headers.get("Content-Length", "")
        #: The bytes the body will give: its Content-Length, unless encoded (that length is not the decoded one).
        self.length = int(length) if length.isdigit() and encoding in ("", "identity") else None

    def readinto(self, view: memoryview) -> int:
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        try:
            if self._fp is not None:
                return self._fp.readinto(view)
            data = self._resp.raw.read(len(view), decode_content=True)
        except TimeoutError as exc:
            raise requests.exceptions.ReadTimeout(f"read timed out: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise requests.exceptions.ChunkedEncodingError(f"the body broke off: {type(exc).__name__}: {exc}") \
                from None
        view[:len(data)] = data
        return len(data)

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = fill(self, memoryview(buf))
        del buf[got:]
        return bytes(buf)

    def release(self) -> None:
        """After the last byte: the connection goes back to the pool (read around urllib3, the body would
        otherwise count as unread and the connection be closed)."""
        if self._fp is not None and not self._fp.isclosed() and self._fp.length == 0:
            self._fp.read()  # an empty body: http.client marks the response done on its first read
        if self._fp is not None and self._fp.isclosed():
            release = getattr(self._resp.raw, "release_conn", None)
            if release is not None:
                release()


def fill(body: Body, view: memoryview) -> int:
    """Read until ``view`` is full or the body ends; the bytes read."""
    got = 0
    while got < len(view):
        n = body.readinto(view[got:])
        if not n:
            break
        got += n
    return got


class Hasher:
    """The hashing side of :func:`receive`: a pool of buffers, each hashed once written; on a helper thread (big
    bodies) or in line. The reader takes a free buffer, fills and writes it, and gives it here; it comes back to
    the pool once hashed, so at most ``count`` buffers exist. :meth:`close` waits until every buffer given is
    hashed: the digest is then that of every byte written."""

    def __init__(self, h: Any, threaded: bool, size: int = BUFFER, count: int = BUFFERS):
        self.h = h
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(count if threaded else 1):
            self._free.put(bytearray(size))
        self._todo: queue.SimpleQueue[tuple[bytearray, int] | None] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._todo = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="xnat-md5", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._todo is not None
        while (item := self._todo.get()) is not None:
            buf, n = item
            self.h.update(memoryview(buf)[:n])
            self._free.put(buf)

    def take(self) -> bytearray:
        return self._free.get()

    def give(self, buf: bytearray, n: int) -> None:
        if self._todo is None:
            self.h.update(memoryview(buf)[:n])
            self._free.put(buf)
        else:
            self._todo.put((buf, n))

    def put_back(self, buf: bytearray) -> None:
        self._free.put(buf)

    def close(self) -> None:
        if self._thread is not None and self._todo is not None:
            self._todo.put(None)
            self._thread.join()
            self._thread = None


def receive(body: Body, write: Callable[[memoryview], Any], h: Any, expected: int | None,
            progress: Progress = NO_PROGRESS) -> int:
    """The whole body through ``write`` and into the MD5 ``h``; returns the bytes received.

    Buffer by buffer: read (filled to the brim), written, then hashed, on a helper thread for a body of
    :data:`THREADED_MD5_MIN` or more (or of unknown length), so that a verified download runs at the rate of MD5
    alone. Only whole buffers are written, and the last one once the body has ended where ``expected`` says: when the
    transfer breaks, what was written (and hashed: ``h`` is always the MD5 of exactly that) is whole buffers, and
    the bytes of the buffer being filled are dropped. A body shorter than ``expected`` raises
    ``ChunkedEncodingError`` (:data:`BROKEN`) after keeping what came before."""
    hasher = Hasher(h, threaded=expected is None or expected >= THREADED_MD5_MIN)
    got = 0
    try:
        while True:
            buf = hasher.take()
            view = memoryview(buf)
            want = len(view) if expected is None else min(len(view), expected - got)
            if want <= 0:
                hasher.put_back(buf)
                break
            n = fill(body, view[:want])
            if n < want and expected is not None:
                hasher.put_back(buf)
                raise requests.exceptions.ChunkedEncodingError(f"short body: {got + n} of {expected} bytes")
            if n:
                write(view[:n])
                hasher.give(buf, n)
                got += n
                progress.add(n)
            else:
                hasher.put_back(buf)
            if n < want:
                break
    finally:
        hasher.close()
    body.release()
    return got


def hash_file(path: Path, h: Any) -> Any:
    """``h`` updated with a local file's bytes, read into one reused buffer."""
    buf = memoryview(bytearray(BUFFER))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    return h


def md5_of(path: Path) -> str:
    return str(hash_file(path, hashlib.md5()).hexdigest())


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
        """Each target's place is free of a folder, and its folder can be made and written in (each folder is
        looked at once, whatever the number of files in it)."""
        folders: dict[Path, set[str]] = {}  # target folder -> names of the folders in it
        for target in targets:
            parent = target.parent
            if parent not in folders:
                self.folder(parent, f"Cannot download {target.name}: its folder")
                folders[parent] = _subfolders(parent)
            if target.name in folders[parent]:
                raise XnatBadInputError(f"Cannot download to {target}: a folder is in the way (it would be replaced "
                                        "by a file): nothing was downloaded.")


def _subfolders(folder: Path) -> set[str]:
    """Names of the folders (and links to folders) in ``folder``; none if it does not exist yet."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if e.is_dir()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _names_in(folder: Path) -> set[str] | None:
    """Every name in ``folder`` (None when it does not exist)."""
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None


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
    return _Joiner(root).join(rel)


class _Joiner:
    """:func:`safe_join` for many files under one root: the root and each folder are resolved once (links
    followed, so that a link inside ``root`` to elsewhere is refused), not once per file."""

    def __init__(self, root: Path | Any):
        self.root = root
        self._local = isinstance(root, Path)
        self._top = root.resolve() if self._local else None
        self._folders: dict[PurePosixPath, Path] = {}

    def join(self, rel: str) -> Path:
        if not self._local:  # a storage folder, from check_destination
            return _storage().join_checked(self.root, rel)  # type: ignore[no-any-return]
        pure = check_relpath(rel, self.root)
        folder = self._folders.get(pure.parent)
        if folder is None:
            folder = self._inside((self.root / Path(*pure.parent.parts)).resolve(), rel)
            self._folders[pure.parent] = folder
        target = folder / pure.name
        if os.path.islink(target):  # the name itself a link: where it points must be inside too
            return self._inside(target.resolve(), rel)
        return target

    def _inside(self, path: Path, rel: str) -> Path:
        if path != self._top and self._top not in path.parents:
            raise XnatBadInputError(f"Refusing unsafe path {rel!r}: it would be written outside {self.root}.")
        return path


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


STAGING = ".xnat-part"  # the suffix of a folder a zip is extracted into before it is renamed into place


class _FileWriter:
    """Creates and writes files on a thread of its own, in the order asked, so that creating many small files (a
    file system's slowest operation, and slower still when it is busy) overlaps with receiving and inflating the
    zip they come from. At most :attr:`LIMIT` bytes wait to be written. An error of the writer (a full disk) is
    raised in the caller at its next call, or at :meth:`finish`."""

    LIMIT = 8 * CHUNK

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._room = threading.Condition()
        self._waiting = 0
        self._made: set[Path] = set()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(target=self._run, name="xnat-unzip", daemon=True)
        self._thread.start()

    def open(self, path: Path) -> None:
        self._put("open", path, 0)

    def write(self, data: bytes) -> None:
        self._put("write", data, len(data))

    def close(self) -> None:
        self._put("close", None, 0)

    def _put(self, kind: str, value: Any, n: int) -> None:
        with self._room:
            while self._waiting > self.LIMIT and self.error is None:
                self._room.wait()
            if self.error is not None:
                raise self.error
            self._waiting += n
        self._q.put((kind, value))

    def _run(self) -> None:
        out: Any = None
        while (item := self._q.get()) is not None:
            kind, value = item
            try:
                if self.error is not None:
                    continue
                if kind == "open":
                    if value.parent not in self._made:
                        value.parent.mkdir(parents=True, exist_ok=True)
                        self._made.add(value.parent)
                    out = open(value, "wb")  # closed by its "close" item, or at the end below
                elif kind == "write":
                    out.write(value)
                else:
                    out.close()
                    out = None
            except BaseException as exc:  # handed to the caller
                self.error = exc
            finally:
                if kind == "write":
                    with self._room:
                        self._waiting -= len(value)
                        self._room.notify_all()
                elif self.error is not None:
                    with self._room:
                        self._room.notify_all()
        if out is not None:
            out.close()

    def finish(self) -> None:
        """Wait until everything asked is written (and every file closed); raise the writer's error, if any."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error


class _ZipExtraction:
    """One zip's entries, extracted as they arrive (see :meth:`DownloadMixin._zip_fast_path`).

    Where the folder the zip fills does not exist yet (a first download), its files are written under their own
    names inside a hidden sibling folder (``.DICOM.xnat-part``), and that folder is renamed into place once every
    file in it is verified: one rename instead of one per file, and nothing under a final path before then.
    Otherwise each file goes to ``<name>.part`` beside its place and is renamed on its own."""

    def __init__(self, pairs: list[tuple[RemoteFile, Path]], markers: list[str], progress: Progress):
        self.pairs = pairs
        self.markers = markers
        self.progress = progress
        self.by_path = {f.path: i for i, (f, _) in enumerate(pairs)}
        self.refused: list[str] = []
        self.failed: dict[int, str] = {}
        self.seen: set[int] = set()
        self.parts: list[tuple[int, int, str, Path, dict]] = []  # (pair, entry offset, entry name, part, entry)
        self.counted = 0
        self.opened: list[Path] = []  # every part asked for, kept or not
        self.writer: _FileWriter | None = None
        top = Path(os.path.commonpath([str(t.parent) for _, t in pairs])) if pairs else None
        self.top = top if top is not None and top.name and not os.path.lexists(top) else None
        self.staging = self.top.with_name(f".{self.top.name}{STAGING}") if self.top is not None else None

    def _part(self, target: Path) -> Path:
        if self.staging is not None and self.top is not None:
            return self.staging / target.relative_to(self.top)
        return target.with_name(target.name + ".part")

    def run(self, zs: ForwardZip) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)  # left by a run that was killed
        self.writer = _FileWriter()
        for entry in zs.entries():
            if entry.is_dir:
                continue
            i = self._listed(entry.name)
            if i is None:
                continue
            remote, target = self.pairs[i]
            if entry.size is not None and entry.size != remote.size:
                self.failed[i] = f"the zip holds {entry.size} bytes, the catalog lists {remote.size}"
                continue
            self._extract(zs, entry, i, remote, target)
        self.writer.finish()  # every part written and closed
        for i in self.failed:
            self._part(self.pairs[i][1]).unlink(missing_ok=True)
        drop: set[int] = set()
        for i, offset, name, _, _ in self.parts:  # what only the zip's directory says, checked before any rename
            found = zs.central.get(offset)
            if found is None or found.name != name:
                self.failed[i] = "not in the zip's own directory"
            elif found.is_link:
                self.refused.append(f"{name!r} (a link)")
                self.seen.discard(i)  # reported as missing from the zip: fetched on its own
            else:
                continue
            drop.add(i)
        for i, _, _, part, entry in self.parts:
            if i in drop:
                part.unlink(missing_ok=True)
                self._uncount(entry["size"])
        self.parts = [p for p in self.parts if p[0] not in drop]

    def _listed(self, name: str) -> int | None:
        """The pair an entry delivers, or None (the entry is refused, and why is kept)."""
        try:
            check_relpath(name)
        except XnatBadInputError:
            self.refused.append(f"{name!r} (an unsafe path: absolute, a drive or '..')")
            return None
        named = "/" + name.replace("\\", "/")
        rel = next((named.split(m, 1)[1] for m in self.markers if m in named), None)
        i = self.by_path.get(rel) if rel is not None else None
        if i is None:
            self.refused.append(f"{name!r} (not in the catalog listing)")
            return None
        if i in self.seen:
            self.refused.append(f"{name!r} (a second entry for {rel!r})")
            return None
        self.seen.add(i)
        return i

    def _extract(self, zs: ForwardZip, entry: Any, i: int, remote: RemoteFile, target: Path) -> None:
        """One entry to its part (written by the writer thread, hashed here), kept for renaming once the zip has
        ended if its size and MD5 match; a part that does not match is removed once written."""
        assert self.writer is not None
        part = self._part(target)
        self.opened.append(part)
        self.writer.open(part)
        h = hashlib.md5()
        size = 0
        for chunk in zs.data(entry, remote.size):
            self.writer.write(chunk)
            h.update(chunk)
            size += len(chunk)
        self.writer.close()
        md5 = h.hexdigest()
        problem = DownloadMixin._check_download(remote, size, md5)
        if problem is not None:
            self.failed[i] = problem
            return
        self.progress.add(size)
        self.counted += size
        self.parts.append((i, entry.offset, entry.name, part,
                           {"path": str(target), "size": size, "md5": md5, "skipped": False, "uri": remote.uri}))

    def _uncount(self, n: int) -> None:
        self.progress.credit(-n)
        self.counted -= n

    def commit(self, out: list[dict | None]) -> None:
        """Rename every verified part into place: the staging folder whole, or each file."""
        whole = False
        if self.staging is not None and self.top is not None and self.parts and not os.path.lexists(self.top):
            try:
                os.rename(self.staging, self.top)
                whole = True
            except OSError:  # the folder appeared meanwhile: file by file, below
                whole = False
        for i, _, _, part, entry in self.parts:
            target = self.pairs[i][1]
            if not whole:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, target)
            out[i] = entry
            self.progress.file_done()
        self.parts = []
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def drop(self) -> None:
        """The zip failed: no part of it is kept, nothing counted."""
        if self.writer is not None:
            with contextlib.suppress(BaseException):  # the failure being handled is the one to report
                self.writer.finish()
        for part in self.opened:
            part.unlink(missing_ok=True)
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        self._uncount(self.counted)
        self.parts = []

    def report(self, shown: str) -> None:
        def some(items: list[str]) -> str:
            return ", ".join(items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "")

        if self.refused:
            log.warning("Zip of %s: ignored %d entries: %s", shown, len(self.refused), some(self.refused))
        if self.failed:
            log.warning("Zip of %s: %d files failed verification and will be downloaded one by one: %s", shown,
                        len(self.failed), some([f"{self.pairs[i][0].path} ({why})" for i, why in self.failed.items()]))
        missing = [f.path for i, (f, _) in enumerate(self.pairs) if i not in self.seen]
        if missing:
            log.warning("Zip of %s: %d listed files are missing from it and will be downloaded one by one: %s",
                        shown, len(missing), some(missing))


Pair = tuple[RemoteFile, Path]
# What reading one zip entry can raise when the entry (not the whole zip) is damaged or unsupported.
ENTRY_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError)


def is_link(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


class DownloadMixin:
    transport: XnatTransport
    #: The zip fast path of :meth:`download_scans` and :meth:`download_session` is taken for a scan resource of
    #: at least ``ZIP_MIN_FILES`` files whose mean size is below ``ZIP_MAX_MEAN_SIZE`` bytes, when none of its
    #: files (nor a ``.part`` of one) is on disk yet; ``ZIP_FAST_PATH = False`` turns it off.
    ZIP_FAST_PATH: bool = True
    ZIP_MIN_FILES: int = 20
    ZIP_MAX_MEAN_SIZE: int = 2 * CHUNK

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
            return _storage().download_file_to_storage(self, remote, target)  # type: ignore[no-any-return]
        target = Path(target)
        _Destinations().files([target])
        progress = self._progress(f"Download of {target}", [(remote, target)])
        entry = self._download_one(remote, target, progress)
        progress.finish()
        return entry

    def _download_one(self, remote: RemoteFile, target: Path, progress: Progress = NO_PROGRESS) -> dict:
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
            problem = self._check_download(remote, size, md5)
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

    @staticmethod
    def _check_download(remote: RemoteFile, size: int, md5: str) -> str | None:
        if remote.size is not None and size != remote.size:
            return f"got {size} bytes, the catalog lists {remote.size}"
        if remote.digest and md5 != remote.digest:
            return f"MD5 {md5} does not match the catalog digest {remote.digest}"
        return None

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
            with open(part, "ab" if have else "wb") as out:

                def write(view: memoryview) -> None:
                    out.write(view)
                    state.wrote(len(view))

                got = receive(body, write, h, body.length, progress)
            return have + got, h.hexdigest()

    # ---- many files --------------------------------------------------------------------------------
    def download_files(self, files: Iterable[tuple[RemoteFile, Path]], workers: int | None = None) -> Manifest:
        """Download (remote, local path) pairs with a bounded pool of workers; returns the manifest.

        A target may be on object storage (see :mod:`.storage`)."""
        files = list(files)
        if any(on_storage(t) for _, t in files):
            return _storage().download_to_storage(self, files, workers)  # type: ignore[no-any-return]
        pairs = [(remote, Path(target)) for remote, target in files]
        _Destinations().files(t for _, t in pairs)  # every place, before the first byte moves
        if not pairs:
            return Manifest()
        progress = self._progress(f"Download to {self._where([t for _, t in pairs])}", pairs)
        manifest = self._download_each(pairs, workers, progress)
        progress.finish()
        return manifest

    def _download_each(self, pairs: list[Pair], workers: int | None, progress: Progress) -> Manifest:
        limit = max(1, min(len(pairs), workers or self.transport.config.workers))
        if limit == 1:
            results = [self._download_one(remote, target, progress) for remote, target in pairs]
        else:
            with ThreadPoolExecutor(max_workers=limit) as pool:
                results = list(pool.map(lambda p: self._download_one(p[0], p[1], progress), pairs))
        manifest = Manifest()
        for (remote, _), entry in zip(pairs, results, strict=True):
            manifest.add(entry["path"], entry["size"], entry["md5"], entry["skipped"], uri=remote.uri)
        return manifest

    def download_resource(self, path: str, resource: str, dest: str | os.PathLike[str],
                          workers: int | None = None) -> Manifest:
        """All files of one resource of an archive object (``path`` from ``base_path``) into ``dest``."""
        dest = check_destination(dest)
        files = self.list_files(f"{path}/resources/{q(resource)}")
        joiner = _Joiner(dest)
        return self.download_files(((f, joiner.join(f.path)) for f in files), workers)

    def select_scans(self, project: str, experiment: str | Experiment, scans: str | Iterable[str],
                     experiment_path: str | None = None) -> list[Scan]:
        """Scans chosen by ``ALL``, a list of IDs or types, or a regular expression (``re:T1.*``) on the type.

        ``experiment_path`` (from :meth:`experiment_path`) saves looking the experiment up again."""
        exp_path = experiment_path or self.experiment_path(project, experiment)  # type: ignore[attr-defined]
        available = self.scans_at(exp_path)  # type: ignore[attr-defined]
        if scans == "ALL":
            return available  # type: ignore[no-any-return]
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
        joiner = _Joiner(dest)
        for scan in self.select_scans(project, experiment, scans, exp_path):
            path = f"{exp_path}/scans/{q(scan.id)}/resources/{q(resource)}"
            try:
                files = self.list_files(path)
            except XnatError as exc:
                if exc.status == 404:
                    continue  # this scan has no such resource
                raise
            zips.append((path, list(range(len(pairs), len(pairs) + len(files)))))
            pairs += [(f, joiner.join(f"{scan.id}/{resource}/{f.path}")) for f in files]
        return self._download_pairs(pairs, zips, workers, dest)

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
        joiner = _Joiner(dest)

        def add(path: str, prefix: str) -> None:
            pairs.extend((f, joiner.join(f"{prefix}/{f.resource}/{f.path}")) for f in self.list_files(path))

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
        return self._download_pairs(pairs, zips, workers, dest)

    # ---- the zip fast path -------------------------------------------------------------------------
    def _download_pairs(self, pairs: list[Pair], zips: list[tuple[str, list[int]]],
                        workers: int | None, dest: Any = None) -> Manifest:
        """Download (remote, local path) pairs; each group in ``zips`` (a resource path, indices into ``pairs``)
        may come as one zip.

        Each eligible group (:meth:`_zip_eligible`) is fetched as ``GET {path}/files?format=zip`` and extracted
        as it arrives by :meth:`_zip_fast_path`, which keeps only entries whose size and MD5 match the listing.
        Every pair it did not deliver goes through the per-file path (skip, resume, retry, verify), so the
        manifest, in the order of ``pairs``, is the one the per-file path gives. Pairs on object storage go file
        by file (a zip is read from its end: it would need a whole local copy).
        """
        if any(on_storage(t) for _, t in pairs):
            return _storage().download_to_storage(self, pairs, workers, probe=False)  # type: ignore[no-any-return]
        _Destinations().files(t for _, t in pairs)  # before the first request for a file
        if not pairs:
            return Manifest()
        progress = self._progress(f"Download to {dest if dest is not None else self._where([t for _, t in pairs])}",
                                  pairs)
        chosen = [(path, idx) for path, idx in zips if self._zip_eligible([pairs[i] for i in idx])]
        from_zip: dict[int, dict] = {}  # index into pairs -> manifest entry
        if chosen:
            limit = max(1, min(len(chosen), workers or self.transport.config.workers))
            if limit == 1:
                results = [self._zip_fast_path(path, [pairs[i] for i in idx], progress) for path, idx in chosen]
            else:
                with ThreadPoolExecutor(max_workers=limit) as pool:
                    results = list(pool.map(lambda z: self._zip_fast_path(z[0], [pairs[i] for i in z[1]], progress),
                                            chosen))
            for (_, idx), got in zip(chosen, results, strict=True):
                from_zip.update((i, entry) for i, entry in zip(idx, got, strict=True) if entry is not None)
        rest = [p for i, p in enumerate(pairs) if i not in from_zip]
        per_file = iter(self._download_each(rest, workers, progress).files if rest else [])
        manifest = Manifest()
        for i in range(len(pairs)):
            manifest.add(**(from_zip[i] if i in from_zip else next(per_file)))
        progress.finish()
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
        names: dict[Path, set[str] | None] = {}  # one listing per folder, not two lookups per file
        for _, t in pairs:
            if t.parent not in names:
                names[t.parent] = _names_in(t.parent)
            there = names[t.parent]
            if there and (t.name in there or t.name + ".part" in there):
                return False
        return True

    def _zip_fast_path(self, path: str, pairs: list[Pair], progress: Progress = NO_PROGRESS) -> list[dict | None]:
        """``GET {path}/files?format=zip``, extracted as it arrives (:class:`~.zip_stream.ForwardZip`).

        Returns one manifest entry per pair, or None for a pair the zip did not deliver verified (that file is
        then fetched on its own). Each listed entry is written to ``<name>.part`` and checked against the listing
        while the rest of the zip is in transit; the parts are renamed only once the zip has ended well and its
        central directory agrees (no entry a link). Never raises for a transfer problem: a failed, broken or
        unreadable zip leaves every file to the per-file path, and no part behind.
        """
        out: list[dict | None] = [None] * len(pairs)
        url = f"{path}/files"
        shown = self.transport.redact(url)
        labels = {f.resource for f, _ in pairs if f.resource} | {unquote(path.rstrip("/").rsplit("/", 1)[-1])}
        zipped = _ZipExtraction(pairs, [f"/resources/{label}/files/" for label in labels], progress)
        try:
            resp = self.transport.request("GET", url, params={"format": "zip"}, stream=True)
            with resp:
                head = self._zip_head(resp, url)
                zipped.run(ForwardZip(Body(resp, head).read))
        except (XnatError, *BROKEN) as exc:
            reason = self.transport.redact(str(exc))[:300] if isinstance(exc, XnatError) else \
                f"transfer broke: {type(exc).__name__}"
            log.warning("Zip download of %s failed (%s); downloading its %d files one by one", shown, reason,
                        len(pairs))
            zipped.drop()
            return out
        except ZipStreamError as exc:
            log.warning("The zip of %s is damaged (%s); downloading its %d files one by one", shown, exc, len(pairs))
            zipped.drop()
            return out
        except BaseException:
            zipped.drop()
            raise
        zipped.commit(out)
        zipped.report(shown)
        return out

    def _zip_head(self, resp: requests.Response, path: str) -> bytes:
        """The first bytes of a zip answered as ``text/html`` (a gateway may label it so), looked at for an error
        page: raises its typed error when it is one, else returns them (they belong to the zip)."""
        if "text/html" not in resp.headers.get("Content-Type", ""):
            return b""
        head = resp.raw.read(64 * 1024, decode_content=True)
        text = head.decode("utf-8", "replace")
        if looks_like_html(text):
            raise_for_answer("GET", path, resp.status_code, text, self.transport.redact)
        return bytes(head)

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
        resp = self.transport.request("GET", path, params={"format": "zip"}, stream=True)
        head = b""
        broke: XnatError | None = None
        try:
            if "text/html" in resp.headers.get("Content-Type", ""):  # perhaps an error page answered with 200
                head = resp.raw.read(64 * 1024, decode_content=True)
                text = head.decode("utf-8", "replace")
                if looks_like_html(text):
                    resp.close()
                    raise_for_answer("GET", path, resp.status_code, text, self.transport.redact)
            with resp, open(part, "wb") as out:
                out.write(head)  # bytes already read to look for an error page belong to the zip
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
        except BROKEN as exc:
            resp.close()
            part.unlink(missing_ok=True)
            where = self.transport.redact(path)
            broke = chained(XnatTransferError(f"GET {where}?format=zip: transfer broke ({type(exc).__name__})",
                                              method="GET", path=where), redacted_cause(exc, self.transport.redact))
        if broke is not None:
            raise broke  # outside the except block: the library's exception is not its context
        return re.search(r'filename="?([^";/\\]+)"?', resp.headers.get("Content-Disposition", ""))

    @staticmethod
    def extract_zip(archive: Path, dest: Path) -> Manifest:
        manifest = Manifest()
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
                joiner = _Joiner(dest)
                targets = []
                for info in infos:  # check every name before writing anything
                    if is_link(info):
                        raise XnatBadInputError(f"Refusing link {info.filename!r} in the downloaded zip.")
                    targets.append(joiner.join(info.filename))
                _Destinations().files(targets)
                for info, target in zip(infos, targets, strict=True):
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


