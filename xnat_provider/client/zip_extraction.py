"""Zips extracted into place: as they arrive over the wire (:class:`ZipExtraction`, the scan downloads' fast
path), or from a file on disk (:func:`extract_zip`).

Both write nothing under a final name until it is verified: each entry goes to ``<name>.part`` (or into a hidden
staging folder renamed into place whole), and only entries the catalog lists, with its size and MD5, are kept.
Files are created and written on a thread of their own (:class:`FileWriter`): creating thousands of small files
is a file system's slowest operation, and it then overlaps with receiving and inflating the zip.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any

from .destinations import Destinations, Joiner, check_relpath
from .errors import XnatBadInputError, XnatTransferError
from .hashed_stream import CHUNK, catalog_mismatch
from .models import Manifest, RemoteFile
from .progress import Progress
from .zip_stream import ForwardZip

log = logging.getLogger("xnat_provider.client")

STAGING = ".xnat-part"  # the suffix of a folder a zip is extracted into before it is renamed into place


class FileWriter:
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


class ZipExtraction:
    """One zip's entries, extracted as they arrive (see :meth:`~.downloads.DownloadMixin._zip_fast_path`).

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
        self.writer: FileWriter | None = None
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
        self.writer = FileWriter()
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
        problem = catalog_mismatch(remote, size, md5)
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



def is_link(info: zipfile.ZipInfo) -> bool:
    """Whether a zip entry is a symbolic link (its Unix mode, in the high bits): never extracted, it could point
    anywhere."""
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def extract_zip(archive: Path, dest: Path) -> Manifest:
    """A zip on disk extracted into ``dest``: every name checked (no link, nothing outside ``dest``, no folder in
    a file's way) before anything is written, then each file through ``<name>.part``, renamed once whole; the
    manifest has each file's MD5 as extracted. A damaged zip is an :class:`XnatTransferError`."""
    manifest = Manifest()
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            joiner = Joiner(dest)
            targets = []
            for info in infos:  # check every name before writing anything
                if is_link(info):
                    raise XnatBadInputError(f"Refusing link {info.filename!r} in the downloaded zip.")
                targets.append(joiner.join(info.filename))
            Destinations().files(targets)
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
