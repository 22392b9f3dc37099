"""What an import sends: every file's header read first, then one zip written while it is sent.

Before any byte is sent, every file's header is read with pydicom (stopping before the pixel data): a file
that is not DICOM is a :class:`XnatBadInputError` naming it (unless ``ignore_unparsable``), and the study UIDs
and the subject and session labels XNAT will derive are known (:func:`plan_import`). Directories, single files,
zips and tars are then zipped on the fly into the request body (:func:`zip_stream`): no temporary copy, no whole
file in memory. The zip is deflated at level 0 (stored blocks inside DEFLATED entries), the only streamed form
XNAT's reader, ``java.util.zip.ZipInputStream``, accepts.

A zip or tar is opened once per pass (once to plan, once per request body), its members read in order.

The source may be on object storage (an ``ObjectStoragePath``, see :mod:`.storage`): its files are listed once
and streamed from the file system, headers read in small blocks; a zip or tar there is read in place.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import XnatBadInputError
from .protocol import check_label
from .storage import FsPath, Target, as_target

CHUNK = 1 << 20
HEADER_BLOCK = 256 * 1024  # storage reads while headers are parsed: a DICOM header, not a whole file per read
COMMENT_TAGS = ("PatientComments", "StudyComments", "AdditionalPatientHistory")
KV_RE = re.compile(r"(subject|session)\s*:\s*([\w\-]*)", re.IGNORECASE)

Opener = Callable[[], IO[bytes]]


@dataclass
class Entry:
    """One file to send. ``archive`` is the zip or tar it is a member of (None for a plain file): while a pass
    over that archive is open, ``open`` reads from the one open archive."""

    name: str
    open: Opener
    size: int
    study_uid: str
    archive: _Archive | None = None
    instance_uid: str = ""  # SOPInstanceUID: XNAT keeps one file per instance of a study


@dataclass
class ImportPlan:
    """What an import will send: entries by study, and the labels XNAT will give each study."""

    entries: list[Entry] = field(default_factory=list)
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # study UID -> (subject, experiment)
    skipped: list[str] = field(default_factory=list)

    @property
    def studies(self) -> list[str]:
        return list(dict.fromkeys(e.study_uid for e in self.entries))

    def instances(self, study_uid: str) -> int:
        """How many DICOM instances of ``study_uid`` the plan sends: the files XNAT keeps for it (a file sent
        twice under one SOPInstanceUID is stored once)."""
        return len({e.instance_uid or e.name for e in self.entries if e.study_uid == study_uid})

    def only(self, studies: Collection[str]) -> ImportPlan:
        """The same plan restricted to ``studies`` (study UIDs of this plan); raise on a UID it does not hold."""
        unknown = [uid for uid in studies if uid not in self.labels]
        if unknown:
            raise XnatBadInputError(f"Not a study of this import: {', '.join(unknown)}")
        wanted = set(studies)
        return ImportPlan(entries=[e for e in self.entries if e.study_uid in wanted],
                          labels={u: v for u, v in self.labels.items() if u in wanted}, skipped=list(self.skipped))


def _sanitise(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", value.strip()).strip("_")


def _route(ds: Any, subject: str | None, experiment: str | None) -> tuple[str, str]:
    """The subject and experiment labels XNAT derives (request parameters, comments, then patient tags)."""
    found: dict[str, str] = {}
    for tag in COMMENT_TAGS:
        for key, value in KV_RE.findall(str(ds.get(tag, "") or "")):
            found.setdefault(key.lower(), value)
    subj = subject or found.get("subject") or _sanitise(str(ds.get("PatientName", "") or ""))
    sess = experiment or found.get("session") or _sanitise(str(ds.get("PatientID", "") or "")) or "dicom_upload"
    return subj, sess


def _header(fh: IO[bytes]) -> Any:
    """The header, or None when the file is not DICOM (any parse failure, never an exception)."""
    import pydicom  # here, not at the top: pydicom (and NumPy) cost half a second that only imports need

    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        ds.get("SOPInstanceUID"), ds.get("SOPClassUID"), ds.get("StudyInstanceUID")  # values parse lazily
        return ds
    except pydicom.errors.InvalidDicomError:
        pass  # no preamble: XNAT still reads it if it parses as a data set with its UIDs
    except Exception:
        return None
    try:
        fh.seek(0)
        with warnings.catch_warnings():  # pydicom warns about whatever it finds in a file that is not DICOM
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            return ds if ds.get("SOPInstanceUID") and ds.get("StudyInstanceUID") else None
    except Exception:
        return None


def check_import_source(source: str | os.PathLike[str]) -> None:
    """Refuse, before anything is read, a source that is neither a regular file nor a folder (a pipe, a socket,
    a device): opening a pipe to read it would wait for a writer forever."""
    if os.path.exists(source) and not (os.path.isfile(source) or os.path.isdir(source)):
        raise XnatBadInputError(f"Cannot import {os.fspath(source)}: it is neither a regular file nor a folder (a "
                                "pipe, a socket or a device). Nothing was sent.")


def experiment_argument(call: str, experiment: str | None, session: str | None) -> str | None:
    """The value of ``experiment=``, which ``call`` still accepts under its old name ``session=`` (with a
    ``DeprecationWarning``): "session" now means what XNAT means by it, an imaging session is an experiment.
    Giving both is a ``TypeError``. The same rule as the operators' ``renamed_argument``, without Airflow."""
    if session is None:
        return experiment
    if experiment is not None:
        raise TypeError(f"{call}: give experiment= only; session= is its deprecated name, and both were given")
    warnings.warn(f"{call}: the argument 'session' is deprecated, use 'experiment' (same value)",
                  DeprecationWarning, stacklevel=3)
    return session


def plan_import(
    source: str | os.PathLike[str] | Any,
    *,
    subject: str | None = None,
    experiment: str | None = None,
    ignore_unparsable: bool = False,
    session: str | None = None,
) -> ImportPlan:
    """Read every header of a zip, tar, DICOM file or directory and plan the import; raise on bad input.

    ``source`` may be on object storage (an ``ObjectStoragePath``: see :mod:`.storage`). ``subject`` and
    ``experiment`` are the labels the import will ask for (default: what XNAT derives from the headers);
    ``session`` is ``experiment``'s deprecated name. Files that are not DICOM are refused, or skipped (listed in
    the plan's ``skipped``) with ``ignore_unparsable``."""
    experiment = experiment_argument("plan_import", experiment, session)
    src = as_target(source, "Import source")
    found = src.info() if isinstance(src, FsPath) else {"type": "directory"} if src.is_dir() else {}
    if found is None or (isinstance(src, Path) and not src.exists()):
        raise XnatBadInputError(f"Nothing to import: {src} does not exist.")
    if isinstance(src, Path):
        check_import_source(src)
    planner = _Planner(subject, experiment, ignore_unparsable)
    _read_headers(src, found, planner.add)
    return planner.checked(src)


class _Planner:
    """Builds a plan one file at a time: the header read, the file kept, skipped or counted as bad."""

    def __init__(self, subject: str | None, experiment: str | None, ignore_unparsable: bool) -> None:
        self.subject, self.experiment, self.ignore_unparsable = subject, experiment, ignore_unparsable
        self.plan = ImportPlan()
        self.bad: list[str] = []

    def add(self, name: str, opener: Opener, size: int, archive: _Archive | None = None,
            header: Opener | None = None) -> None:
        """One file: ``header`` (default ``opener``) opens it for its header, ``opener`` for sending it."""
        with (header or opener)() as fh:
            ds = _header(fh)
        if ds is None or not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID"):
            (self.plan.skipped if self.ignore_unparsable and ds is None else self.bad).append(name)
            return
        uid = str(ds.get("StudyInstanceUID", ""))
        self.plan.labels.setdefault(uid, _route(ds, self.subject, self.experiment))
        self.plan.entries.append(Entry(name, opener, size, uid, archive, str(ds.get("SOPInstanceUID"))))

    def checked(self, src: Target) -> ImportPlan:
        """The plan, or the reason XNAT would refuse it (files that are not DICOM, none at all, sizes its zip
        reader refuses, labels it does not accept), before anything is sent."""
        plan, bad = self.plan, self.bad
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise XnatBadInputError(
                f"Not DICOM (or no SOP UIDs) in {src}: {', '.join(bad[:5])}{more}. "
                "Remove them or import with ignore_unparsable=True."
            )
        if not plan.entries:
            raise XnatBadInputError(f"No DICOM files found in {src}.")
        too_big = [e.name for e in plan.entries if _unreadable_by_xnat(e.size)]
        if too_big:
            raise XnatBadInputError(
                f"{len(too_big)} file(s) in {src} between 2 and 4 GiB ({', '.join(too_big[:5])}): XNAT's zip "
                "reader (java.util.zip.ZipInputStream) refuses an entry of that size in a streamed zip, so XNAT "
                "would refuse the import. Send such files to XNAT's DICOM receiver (C-STORE) instead."
            )
        for subj, sess in plan.labels.values():
            check_label(subj, "subject")
            check_label(sess, "session")
        return plan


def _read_headers(src: Target, found: dict[str, Any], add: Callable[..., None]) -> None:
    """Hand every file of ``src`` to ``add``: a folder's files (hidden ones left out), a zip's or a tar's
    members (each archive opened once for every header), or the one file."""
    is_dir = found.get("type") == "directory"
    kind = None if is_dir else "zip" if _is_archive(src, zipfile.is_zipfile) else "tar" if _is_archive(
        src, tarfile.is_tarfile) else None
    if is_dir and isinstance(src, FsPath):  # listed once, each file streamed from the store
        for f in src.files():
            if not f.name.startswith("."):
                add(f.relative_to(src), f.open_read, f.size(), header=lambda f=f: f.open_read(HEADER_BLOCK))
    elif is_dir:
        for p in sorted(src.rglob("*")):  # type: ignore[union-attr]
            if p.is_file() and not p.name.startswith("."):
                add(p.relative_to(src).as_posix(), lambda p=p: open(p, "rb"), p.stat().st_size)
    elif kind == "zip":
        archive = _Archive(src, "zip")
        with archive.opened() as zf:  # one open archive for every header
            for info in zf.infolist():
                if not info.is_dir():
                    add(info.filename, lambda info=info: archive.member(info), info.file_size, archive)
    elif kind == "tar":
        archive = _Archive(src, "tar")
        with archive.opened() as tf:
            for m in tf:  # members in order: a compressed tar is decompressed once, never rewound
                if m.isfile():
                    add(m.name, lambda m=m: archive.member(m), m.size, archive,
                        header=lambda m=m: _Rewindable(archive.member(m)))
    elif isinstance(src, FsPath):
        add(src.name, src.open_read, int(found.get("size") or 0), header=lambda: src.open_read(HEADER_BLOCK))
    else:
        add(src.name, lambda: open(src, "rb"), src.stat().st_size)  # type: ignore[union-attr]


def _is_archive(src: Target, test: Callable[[Any], bool]) -> bool:
    """``zipfile.is_zipfile`` or ``tarfile.is_tarfile`` of a local file, or of a storage file read in place."""
    if isinstance(src, Path):
        return test(src)
    try:
        with src.open_read(HEADER_BLOCK) as fh:
            return test(fh)
    except (OSError, ValueError, EOFError):  # fsspec files refuse a seek before the start with ValueError
        return False


def _open_archive(path: Target, kind: str) -> Any:
    """A ``ZipFile`` or ``TarFile``: of a local file, or of a storage file read in place (closed with it)."""
    if isinstance(path, Path):
        return zipfile.ZipFile(path) if kind == "zip" else tarfile.open(path)
    raw = path.open_read()
    try:
        handle = zipfile.ZipFile(raw) if kind == "zip" else tarfile.open(fileobj=raw)
    except BaseException:
        raw.close()
        raise
    close = handle.close

    def close_both() -> None:
        try:
            close()
        finally:
            raw.close()

    handle.close = close_both
    return handle


class _Archive:
    """A zip or tar read in passes. Inside ``with archive.opened():`` every member is read from that one open
    archive (members must then be read one at a time, in archive order, for a compressed tar to be read
    once); outside a pass, :meth:`member` opens the archive for that member alone."""

    def __init__(self, path: Target, kind: str):
        self.path, self.kind = path, kind
        self._open: Any = None
        self._users = 0

    def _new(self) -> Any:
        return _open_archive(self.path, self.kind)

    @contextlib.contextmanager
    def opened(self) -> Iterator[Any]:
        """Keep the archive open for a pass. Passes may overlap (a request body abandoned by a failed attempt
        is closed late): the archive closes when the last one ends."""
        if self._open is None:
            self._open = self._new()
        self._users += 1
        try:
            yield self._open
        finally:
            self._users -= 1
            if not self._users:
                handle, self._open = self._open, None
                handle.close()

    def member(self, info: Any) -> IO[bytes]:
        """A member's bytes, streamed: from the open archive during a pass, else from its own open."""
        if self._open is None:
            return _ZipMember(self.path, info) if self.kind == "zip" else _TarMember(self.path, info)
        if self.kind == "zip":
            return self._open.open(info)  # type: ignore[no-any-return]
        fh = self._open.extractfile(info)
        if fh is None:
            raise XnatBadInputError(f"{self.path}: {info.name} is not a regular file")
        return fh  # type: ignore[no-any-return]


class _ZipMember:
    """A zip entry opened outside a pass, closing its own archive with it."""

    def __init__(self, path: Target, info: zipfile.ZipInfo):
        self._zf = _open_archive(path, "zip")
        self._fh = self._zf.open(info)

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(n)

    def seek(self, *args: Any) -> int:
        return self._fh.seek(*args)

    def tell(self) -> int:
        return self._fh.tell()

    def __enter__(self) -> _ZipMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()
        self._zf.close()


class _TarMember(_ZipMember):
    def __init__(self, path: Target, member: tarfile.TarInfo):
        self._zf = _open_archive(path, "tar")
        self._fh = self._zf.extractfile(member)  # type: ignore[assignment]


class _Rewindable:
    """A forward-only stream that can seek back over what was already read (kept in memory).

    Reading a header, pydicom seeks back a few bytes at a time; in a compressed tar each backward seek would
    decompress the archive again from its start. Only what pydicom reads (the header) is kept.
    """

    def __init__(self, raw: IO[bytes]):
        self._raw, self._buf, self._pos, self._eof = raw, bytearray(), 0, False

    def _fill(self, end: int | None) -> None:
        while not self._eof and (end is None or len(self._buf) < end):
            chunk = self._raw.read(CHUNK if end is None else max(end - len(self._buf), 1))
            if not chunk:
                self._eof = True
            self._buf += chunk

    def read(self, n: int | None = -1) -> bytes:
        self._fill(None if n is None or n < 0 else self._pos + n)
        end = len(self._buf) if n is None or n < 0 else self._pos + n
        out = bytes(self._buf[self._pos:end])
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._fill(None)
            offset += len(self._buf)
        elif whence == 1:
            offset += self._pos
        self._pos = max(offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __enter__(self) -> _Rewindable:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


class _Sink:
    """Where zipfile writes; the generator below hands the bytes on as they come."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from chunks


# The import body's entries are DEFLATED at this zlib level. XNAT reads the body with java.util.zip.ZipInputStream,
# which refuses a STORED entry whose sizes follow in a data descriptor ("only DEFLATED entries can have EXT
# descriptor"), and a streamed zip must put the sizes after the data. Level 0 writes deflate "stored" blocks:
# method 8, which Java accepts with a descriptor, at near memcpy speed. Measured on DICOM pixel data and files,
# one core: level 0 at 7-12 GB/s, level 1 at 55-100 MB/s (below a 1 Gb/s link) for a body 30-55 % smaller.
IMPORT_ZIP_LEVEL = 0


def _needs_zip64(size: int) -> bool:
    """Whether an entry of ``size`` bytes must be written as ZIP64: when its deflated size may pass 2 GiB - 1.

    Python's writer refuses to close a non-ZIP64 entry past ``zipfile.ZIP64_LIMIT`` (2 GiB - 1); level 0 adds 5
    bytes per 64 KiB stored block, and 1/4096 of the size covers that three times over. The planned size is not
    given to the writer, whose own rule (size * 1.05 over the limit) would mark more entries ZIP64 than needed:
    ZipInputStream (OpenJDK 17.0.15, checked) reads an 8-byte data descriptor only after an entry that really
    passed 4 GiB, so XNAT refuses a smaller ZIP64 entry ("invalid entry size"). So a single file of 2 to 4 GiB
    cannot be sent this way: :func:`plan_import` refuses it before anything is sent.
    """
    return size + size // 4096 + (1 << 16) > zipfile.ZIP64_LIMIT


def _unreadable_by_xnat(size: int) -> bool:
    """True for a file :func:`zip_stream` must write as ZIP64 whose deflated size still stays under 4 GiB: Java 17
    then expects 4-byte sizes in the data descriptor and refuses the entry (see :func:`_needs_zip64`). Level 0 adds
    about 5 bytes per 64 KiB, well under ``size // 8192``; a file within that margin below 4 GiB is let through."""
    return _needs_zip64(size) and size + size // 8192 <= 0xFFFFFFFF


def zip_stream(entries: list[Entry]) -> Iterator[bytes]:
    """A zip of the entries, produced while it is sent, in the form XNAT can read.

    A zip written to an unseekable sink carries each entry's CRC and sizes in a data descriptor after its data.
    XNAT's ``ZipInputStream`` accepts that only for DEFLATED entries, so every entry is deflated at
    :data:`IMPORT_ZIP_LEVEL` (0: stored blocks, DICOM barely shrinks and is sent as is). Each source archive is
    opened once for the whole pass and its members streamed in order, a chunk at a time.
    """
    sink = _Sink()
    with contextlib.ExitStack() as stack, \
            zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:  # type: ignore[arg-type]
        for archive in dict.fromkeys(e.archive for e in entries if e.archive is not None):
            stack.enter_context(archive.opened())
        for e in entries:
            info = zipfile.ZipInfo(e.name, date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED  # a ZipInfo does not take the ZipFile's method or level
            # Python 3.13 names the level compress_level (keeping _compresslevel as an alias); 3.11-3.12 only
            # _compresslevel. Unset, zlib's default level 6 would run at a few tens of MB/s.
            setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel", IMPORT_ZIP_LEVEL)
            with e.open() as src, zf.open(info, "w", force_zip64=_needs_zip64(e.size)) as dst:
                for chunk in iter(lambda src=src: src.read(CHUNK), b""):
                    dst.write(chunk)
                    yield from sink.take()
            yield from sink.take()
    yield from sink.take()
