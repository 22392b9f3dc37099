"""Transfers to and from object storage: an fsspec file system (S3, GCS, Azure, memory...) instead of a local folder.

Why: in a Celery deployment the tasks of one DAG run on different machines that share no disk, so a download
that one task writes to ``/work`` is not there for the next task. Airflow's ``ObjectStoragePath`` (a
universal-pathlib ``UPath``) names a place every worker can reach. The client stays free of Airflow: any object
with an fsspec file system in ``.fs`` and its path in ``.path`` is a storage target (duck typing), turned into a
:class:`FsPath` here. A ``file://`` path (fsspec's local file system) becomes a plain :class:`~pathlib.Path`,
so it takes the local code path, with its atomic rename and its speed.

What a download to storage keeps from the local one (:func:`download_to_storage`):

- every file is verified against the catalog (size and MD5) while it streams, a chunk at a time (never a whole
  file in memory), into ``<name>.part``, and moved to its name (``fs.mv``) only once verified;
- a file already there with the catalog's size and MD5 is skipped, so a retry finishes what a failed try began;
- a broken transfer resumes with a Range request onto the upload stream still open (any file system); a
  ``.part`` left by an earlier try is resumed only on file systems that can append (:data:`APPENDABLE`), else
  that file starts again from its first byte (S3 and GCS objects cannot be appended to);
- bad places are refused before any file is requested: a destination that is a file, a folder where a file
  goes, a file above a target, a destination that cannot be written (a probe object is written and removed).

There is no zip fast path to storage: a zip is read from its end, so it would need a whole local copy.
Uploads and imports read storage files through :func:`open_read`, streamed, with sizes from one listing.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from . import destinations
from .destinations import check_relpath
from .errors import XnatBadInputError, XnatTransferError
from .file_downloads import FileDownloadMixin, each_file
from .hashed_stream import BROKEN, CHUNK, Body, catalog_mismatch, receive
from .models import Manifest, RemoteFile
from .progress import NO_PROGRESS, Progress
from .transport import chained, redacted_cause

log = logging.getLogger("xnat_provider.client")

#: Protocols whose ``open(path, "ab")`` appends to what is stored, so that a ``.part`` left by an earlier try
#: can be resumed with a Range request. Object stores (S3, GCS, Azure Blob) are not in it: their objects are
#: written whole, so an interrupted file starts again there.
APPENDABLE: set[str] = {"memory"}
LOCAL_PROTOCOLS = ("file", "local")


def protocols(fs: Any) -> tuple[str, ...]:
    proto = getattr(fs, "protocol", ())
    return (proto,) if isinstance(proto, str) else tuple(proto)


class FsPath:
    """A file or folder on an fsspec file system: the file system, the path on it, and how to show it.

    Only string operations on ``path`` (no request) except where a method says it asks the file system. ``str()``
    gives the URL the user gave, extended (``s3://conn@bucket/prefix/1/DICOM/a.dcm``), so it can be passed on in
    an XCom and turned back into an ``ObjectStoragePath``.
    """

    __slots__ = ("_prefix", "fs", "path", "size_hint")

    def __init__(self, fs: Any, path: str, prefix: str | None = None, size_hint: int | None = None):
        self.fs, self.path, self._prefix, self.size_hint = fs, path, prefix, size_hint

    @classmethod
    def of(cls, target: Any) -> FsPath:
        """From an ``ObjectStoragePath``/``UPath`` (or anything with ``.fs`` and ``.path``)."""
        fs = target.fs
        path = fs._strip_protocol(str(target.path)) or fs.root_marker
        shown, core = str(target), path.lstrip("/")
        prefix = shown[:len(shown) - len(core)] if core and shown.endswith(core) and "://" in shown else None
        return cls(fs, path, prefix)

    def _at(self, path: str, size_hint: int | None = None) -> FsPath:
        return FsPath(self.fs, path, self._prefix, size_hint)

    def __str__(self) -> str:
        if self._prefix is not None:
            return self._prefix + self.path.lstrip("/")
        return str(self.fs.unstrip_protocol(self.path))

    def __repr__(self) -> str:
        return f"FsPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsPath) and other.fs is self.fs and other.path == self.path

    def __hash__(self) -> int:
        return hash((id(self.fs), self.path))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> FsPath:
        return self._at(posixpath.dirname(self.path.rstrip("/")) or self.fs.root_marker)

    def with_name(self, name: str) -> FsPath:
        return self.parent.join(name)

    def join(self, rel: str) -> FsPath:
        """``self / rel`` for a relative path already checked to stay inside (see :func:`join_checked`)."""
        return self._at(f"{self.path.rstrip('/')}/{rel}" if self.path.strip("/") else f"{self.path}{rel}")

    def relative_to(self, root: FsPath) -> str:
        return self.path[len(root.path.rstrip("/")) + 1:]

    # ---- operations that ask the file system ---------------------------------------------------------------
    def info(self) -> dict[str, Any] | None:
        """The file system's information about this path (``type``, ``size``), or None when nothing is there."""
        try:
            return dict(self.fs.info(self.path))
        except FileNotFoundError:
            return None

    def size(self) -> int:
        return self.size_hint if self.size_hint is not None else int(self.fs.size(self.path))

    def open_read(self, block_size: int | None = None) -> IO[bytes]:
        """Open for reading, streamed in blocks of ``block_size`` (the file system's default if None)."""
        if block_size is None:
            return self.fs.open(self.path, "rb")  # type: ignore[no-any-return]
        return self.fs.open(self.path, "rb", block_size=block_size)  # type: ignore[no-any-return]

    def open_write(self, append: bool = False) -> IO[bytes]:
        return self.fs.open(self.path, "ab" if append else "wb")  # type: ignore[no-any-return]

    def remove(self) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    def move(self, to: FsPath) -> None:
        self.fs.mv(self.path, to.path)

    def makedirs(self) -> None:
        self.fs.makedirs(self.path, exist_ok=True)

    def files(self) -> list[FsPath]:
        """Every file under this folder, in path order, with its size from the one listing."""
        found = self.fs.find(self.path, detail=True)
        return [self._at(p, int(i.get("size") or 0)) for p, i in sorted(found.items())
                if i.get("type", "file") != "directory"]

    def glob(self) -> list[FsPath]:
        return [self._at(p) for p in sorted(self.fs.glob(self.path))]

    def can_append(self) -> bool:
        return any(p in APPENDABLE for p in protocols(self.fs))


Target = Path | FsPath


def is_storage(target: object) -> bool:
    """Whether ``target`` names a place on an fsspec file system (``.fs`` and ``.path``), not a local path.

    Looked up on the type where possible: ``ObjectStoragePath.fs`` raises ``ValueError`` (not ``AttributeError``)
    for a scheme no installed provider serves, which must be reported by :func:`as_target`, not lost here."""
    return destinations.on_storage(target)


def as_target(target: Any, what: str = "Transfer target") -> Target:
    """A local :class:`Path` (paths, and storage paths on fsspec's local file system) or an :class:`FsPath`.

    :raises XnatBadInputError: when the storage path's file system cannot be had (an unknown scheme, a missing
        connection): nothing has been sent or written then."""
    if isinstance(target, FsPath):
        return target
    if not is_storage(target):
        return Path(target)
    try:
        fs = target.fs
    except Exception as exc:  # whatever the file system's factory raises is bad input here
        raise XnatBadInputError(f"{what} {target}: no file system for it ({type(exc).__name__}: {exc}). Nothing "
                                "was transferred.") from None
    if any(p in LOCAL_PROTOCOLS for p in protocols(fs)) and any(
            c.__name__ == "LocalFileSystem" for c in type(fs).__mro__):
        return Path(str(target.path))
    return FsPath.of(target)


def join_checked(root: FsPath, rel: str) -> FsPath:
    """``root / rel``, refusing absolute paths, drives, ``..`` and empty names (as ``destinations.safe_join``)."""
    return root.join("/".join(check_relpath(rel, root).parts))


def md5_fs(target: FsPath) -> str:
    h = hashlib.md5()
    with target.open_read() as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- where downloads land ------------------------------------------------------------------------------------
def check_destination(dest: Any) -> Target:
    """A download destination given as a storage path, checked (:func:`check_folder`); a local one (``file://``)
    as the local path checks it."""
    target = as_target(dest, "Download destination")
    return check_folder(target) if isinstance(target, FsPath) else destinations.check_destination(target)


def check_folder(dest: FsPath, what: str = "Download destination") -> FsPath:
    """``dest`` is not a file and can be written: a probe object is written in it and removed (this also finds
    a missing bucket, missing credentials, or a file above ``dest`` on stores that have folders)."""
    info = dest.info()
    if info is not None and info.get("type") != "directory":
        raise XnatBadInputError(f"{what} {dest} is a file: nothing was downloaded.")
    probe = dest.join(f".xnat-write-check-{uuid.uuid4().hex}")
    try:
        with probe.open_write() as fh:
            fh.write(b"")
        probe.remove()
    except Exception as exc:  # any store's refusal, named in the message
        raise XnatBadInputError(f"{what} {dest} cannot be written ({type(exc).__name__}: {exc}): nothing was "
                                "downloaded.") from None
    return dest


def check_targets(targets: list[FsPath]) -> dict[str, int]:
    """Refuse a target whose place is a folder or lies under a file, from one listing of the targets' common
    folder; returns the size of every file already there (``.part`` files included) by path."""
    if not targets:
        return {}
    fs = targets[0].fs
    root = posixpath.commonpath([t.parent.path for t in targets]) if len(targets) > 1 else targets[0].parent.path
    root = root or fs.root_marker
    listing = fs.find(root, withdirs=True, detail=True)
    sizes = {p: int(i.get("size") or 0) for p, i in listing.items() if i.get("type", "file") != "directory"}
    folders = {p for p, i in listing.items() if i.get("type") == "directory"}
    top = root.rstrip("/")
    for t in targets:
        if t.path in folders:
            raise XnatBadInputError(f"Cannot download to {t}: a folder is in the way (it would be replaced by a "
                                    "file): nothing was downloaded.")
        above = posixpath.dirname(t.path)
        while len(above) >= len(top) and above:
            if above in sizes:
                raise XnatBadInputError(f"Cannot download {t.name}: its folder is under {t._at(above)}, which is a "
                                        "file: nothing was downloaded.")
            above = posixpath.dirname(above) if above != posixpath.dirname(above) else ""
    return sizes


# ---- downloads -----------------------------------------------------------------------------------------------
def download_to_storage(client: FileDownloadMixin, files: Iterable[tuple[RemoteFile, Any]], workers: int | None = None,
                        probe: bool = True) -> Manifest:
    """Download (remote, target) pairs where targets may be on storage (local ones take the local path), with a
    bounded pool of workers; returns the manifest, in the order of ``files``. ``probe=False`` when the caller
    has already checked the destination folder (:func:`check_folder`)."""
    pairs = [(remote, as_target(t)) for remote, t in files]
    stored = [t for _, t in pairs if isinstance(t, FsPath)]
    local = [t for _, t in pairs if isinstance(t, Path)]
    if local:
        destinations.Destinations().files(local)  # the local checks, as the local path runs them
    known: dict[str, int] = {}
    for fs in {id(t.fs): t.fs for t in stored}.values():
        mine = [t for t in stored if t.fs is fs]
        if probe:
            parents = {t.parent.path: t.parent for t in mine}
            root = mine[0].parent._at(posixpath.commonpath(list(parents)) or fs.root_marker)
            check_folder(root, "Download destination")
        known.update(check_targets(mine))
    for parent in {t.parent for t in stored}:
        parent.makedirs()
    if not pairs:
        return Manifest()
    progress = client._progress(f"Download to {client._where([t for _, t in pairs])}", pairs)

    def one(pair: tuple[RemoteFile, Target]) -> dict:
        remote, target = pair
        if isinstance(target, Path):
            return client._download_one(remote, target, progress)
        return download_one(client, remote, target, known, progress)

    limit = max(1, min(len(pairs), workers or client.transport.config.workers))
    results = each_file(one, pairs, limit)
    manifest = Manifest()
    for (remote, _), entry in zip(pairs, results, strict=True):
        manifest.add(entry["path"], entry["size"], entry["md5"], entry["skipped"], uri=remote.uri)
    progress.finish()
    return manifest


def download_file_to_storage(client: FileDownloadMixin, remote: RemoteFile, target: Any) -> dict:
    """:meth:`~.file_downloads.FileDownloadMixin.download_file` to a storage path (a local one takes the local path)."""
    target = as_target(target, "Download target")
    if isinstance(target, Path):
        return client.download_file(remote, target)
    check_folder(target.parent, f"Cannot download {target.name}: its folder")
    known = check_targets([target])
    target.parent.makedirs()
    progress = client._progress(f"Download of {target}", [(remote, target)])
    entry = download_one(client, remote, target, known, progress)
    progress.finish()
    return entry


def _known(target: FsPath, known: Mapping[str, int] | None) -> int | None:
    if known is not None:
        return known.get(target.path)
    info = target.info()
    return None if info is None or info.get("type") == "directory" else int(info.get("size") or 0)


class _PartWriter:
    """The open upload stream onto ``<name>.part``. Kept open across a broken transfer in one try, so the rest
    of the file (a Range request) is written after what came before, on any file system; closed and removed
    when its bytes are wrong, closed and kept when it may be resumed by a later try. ``counted``: the bytes of it
    counted as done in the call's progress."""

    def __init__(self, part: FsPath, have: int, progress: Progress = NO_PROGRESS):
        self.part, self.have, self.progress, self.counted = part, have, progress, 0
        self.fh: IO[bytes] | None = part.open_write(append=have > 0)

    def write(self, view: memoryview) -> None:
        assert self.fh is not None
        self.fh.write(bytes(view))  # a copy: a file system may keep what it is given, and the buffer is reused
        self.have += len(view)
        self.counted += len(view)

    def restart(self) -> None:
        self.drop()
        self.progress.credit(-self.counted)
        self.counted = 0
        self.fh, self.have = self.part.open_write(), 0

    def commit(self, target: FsPath) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            fh.close()
        self.part.move(target)

    def drop(self) -> None:
        fh, self.fh = self.fh, None
        try:
            if fh is not None:
                fh.close()
        finally:
            self.part.remove()

    def end(self) -> bool:
        """On failure: keep the part when a later try can append to it, else remove it. True if kept."""
        if self.fh is None:
            return False
        if self.have and self.part.can_append():
            fh, self.fh = self.fh, None
            fh.close()
            return True
        try:
            self.drop()
        except Exception:  # cleanup after a failure must not hide that failure
            log.warning("Could not remove %s after a failed download", self.part)
        return False


def download_one(client: FileDownloadMixin, remote: RemoteFile, target: FsPath,
                 known: Mapping[str, int] | None = None, progress: Progress = NO_PROGRESS) -> dict:
    """One listed file to ``target`` on storage, verified; skipped when already there with the catalog's MD5.

    ``known``: sizes of the files already there, from :func:`check_targets` (else each is looked up)."""
    size = _known(target, known)
    if size is not None and (remote.size is None or size == remote.size) and remote.digest \
            and md5_fs(target) == remote.digest:
        progress.file_done(skipped_bytes=size)
        return {"path": str(target), "size": size, "md5": remote.digest, "skipped": True}
    part = target.with_name(target.name + ".part")
    h = hashlib.md5()
    have = _known(part, known) or 0
    if have and part.can_append() and (remote.size is None or have <= remote.size):
        with part.open_read() as f:  # an earlier try's bytes, resumed: hashed first
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
    else:
        have = 0
    out = _PartWriter(part, have, progress)
    progress.credit(have)
    out.counted = have
    attempts = client.transport.config.retries
    broke: XnatTransferError | None = None
    try:
        for attempt in range(attempts):
            try:
                h = _receive(client, remote, out, h, progress)
            except BROKEN as exc:
                if attempt + 1 < attempts:
                    log.warning("Download of %s broke (%s); resuming", remote.uri, type(exc).__name__)
                    continue
                where = client.transport.redact(remote.uri)
                then = (f"{out.have} bytes kept in {part} for the next attempt" if out.end()
                        else "the next attempt downloads it again from its first byte")
                broke = chained(XnatTransferError(  # type: ignore[assignment]
                    f"GET {where}: transfer broke {attempts} times ({type(exc).__name__}); {then}",
                    method="GET", path=where), redacted_cause(exc, client.transport.redact))
                break
            problem = catalog_mismatch(remote, out.have, h.hexdigest())
            if problem is None:
                out.commit(target)
                progress.file_done()
                return {"path": str(target), "size": out.have, "md5": h.hexdigest(), "skipped": False}
            if attempt + 1 >= attempts:
                out.drop()
                raise XnatTransferError(f"GET {remote.uri}: {problem}", method="GET", path=remote.uri)
            log.warning("Download of %s failed verification (%s); downloading again", remote.uri, problem)
            out.restart()  # wrong bytes: resuming would keep them
            h = hashlib.md5()
    finally:
        out.end()
    if broke is None:  # pragma: no cover
        raise AssertionError("unreachable")
    raise broke  # outside the except block: the library's exception is not its context


def _receive(client: FileDownloadMixin, remote: RemoteFile, out: _PartWriter, h: Any,
             progress: Progress = NO_PROGRESS) -> Any:
    """One request: the rest of the file (from ``out.have``) into ``out``; returns the MD5 of everything written
    (the same pipeline as a local download: :func:`~.hashed_stream.receive`).

    A server that ignores Range (200) or refuses it (416) sends the whole file: ``out`` starts again."""
    headers = {"Range": f"bytes={out.have}-"} if out.have else None
    resp = client.transport.request("GET", remote.uri, headers=headers, stream=True, ok_statuses=(206, 416))
    with resp:
        if resp.status_code == 416 or (out.have and resp.status_code != 206):
            had = out.have
            out.restart()
            h = hashlib.md5()
            if resp.status_code == 416:  # nothing left to fetch, or a bad range: start over
                return _receive(client, remote, out, h, progress) if had else h
        body = Body(resp)
        receive(body, out.write, h, body.length, progress)
    return h


# ---- uploads and imports read storage ---------------------------------------------------------------------------
def storage_files(source: FsPath, remote_dir: str = "") -> list[tuple[FsPath, str]]:
    """(file, resource-relative path) pairs for a storage file or folder, sizes from one listing; ``.part`` files
    (downloads not finished) are left out, as from a local folder.

    :raises XnatBadInputError: before anything is sent, for a source that does not exist or an empty folder."""
    info = source.info()
    if info is None:
        raise XnatBadInputError(f"Nothing to upload: {source} does not exist.")
    prefix = remote_dir.strip("/")
    if info.get("type") != "directory":
        rel = f"{prefix}/{source.name}" if prefix else source.name
        return [(source._at(source.path, int(info.get("size") or 0)), rel)]
    pairs = []
    for f in source.files():
        if not f.name.endswith(".part"):
            rel = f.relative_to(source)
            pairs.append((f, f"{prefix}/{rel}" if prefix else rel))
    if not pairs:
        raise XnatBadInputError(f"Nothing to upload: {source} is an empty folder.")
    return pairs


def open_read(source: Target) -> IO[bytes]:
    """A local file or a storage file, open for reading (streamed: storage files are read in blocks)."""
    return source.open_read() if isinstance(source, FsPath) else open(source, "rb")

