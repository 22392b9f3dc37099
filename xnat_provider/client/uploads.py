"""Uploads that are checked: a file or a directory into a resource, then the catalog is listed again.

Why the extra care: XNAT answers 200 with ``{"duplicates": [...]}`` for a file that already exists (and
stores nothing), and real deployments have reported uploads that succeeded with nothing stored. So every
file's MD5 is computed locally, the overwrite policy is applied against the catalog *before* anything moves,
and after the upload the catalog is listed again and every file's size and digest are compared.

Policies: ``skip_identical`` (default: upload what is missing, skip files already there with the same MD5,
refuse to replace a different file), ``overwrite`` (replace different files), ``fail`` (refuse if any file is
already there). Files go one at a time: XNAT rewrites a resource's catalog on every file, and concurrent
writers to one catalog lose entries.

The source may be on object storage (an ``ObjectStoragePath``, see :mod:`.storage`): each file then streams from
its file system as the request body, with the size from one listing, and every check above runs the same.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import IO, Any

from .destinations import check_relpath
from .errors import XnatBadInputError, XnatConflictError, XnatNotFoundError, XnatTransferError
from .hashed_stream import THREADED_MD5_MIN, Hasher, md5_of
from .models import Manifest, RemoteFile
from .progress import NO_PROGRESS, Progress
from .protocol import q, qpath
from .storage import FsPath, Target, as_target, md5_fs, open_read, storage_files
from .transport import XnatTransport

log = logging.getLogger("xnat_provider.client")
POLICIES = ("skip_identical", "overwrite", "fail")
# The progress of the upload call running in this thread (or task), for each file it sends (see _put).
_PROGRESS: contextvars.ContextVar[Progress] = contextvars.ContextVar("xnat_upload_progress", default=NO_PROGRESS)


def local_files(source: Path, remote_dir: str = "") -> list[tuple[Path, str]]:
    """(local path, resource-relative path) pairs for a file or a directory tree, each file checked readable.

    :class:`XnatBadInputError`, before anything is sent, for a source that is missing, neither a regular file
    nor a folder (a pipe, a socket, a device: reading one could block or never end), or holds a file that cannot
    be read. Special files and broken links inside a folder are left out, with a warning."""
    if not source.exists():
        raise XnatBadInputError(f"Nothing to upload: {source} does not exist.")
    prefix = remote_dir.strip("/")
    if source.is_file():
        rel = f"{prefix}/{source.name}" if prefix else source.name
        pairs = [(source, rel)]
    elif not source.is_dir():
        raise XnatBadInputError(f"Cannot upload {source}: it is neither a regular file nor a folder (a pipe, a "
                                "socket or a device). Nothing was uploaded.")
    else:
        pairs, left_out = [], []
        for p in sorted(source.rglob("*")):
            if p.is_file() and not p.name.endswith(".part"):
                rel = p.relative_to(source).as_posix()
                pairs.append((p, f"{prefix}/{rel}" if prefix else rel))
            elif not p.is_dir():
                left_out.append(p.relative_to(source).as_posix())
        if left_out:
            log.warning("Upload of %s leaves out %d special file(s) or broken link(s): %s", source, len(left_out),
                        ", ".join(left_out[:5]) + (" ..." if len(left_out) > 5 else ""))
        if not pairs:
            raise XnatBadInputError(f"Nothing to upload: {source} is an empty directory.")
    unreadable = []
    for p, _ in pairs:
        try:
            with open(p, "rb"):
                pass
        except OSError as exc:
            unreadable.append(f"{p} ({exc.strerror or type(exc).__name__})")
    if unreadable:
        raise XnatBadInputError(f"Cannot read {len(unreadable)} file(s) to upload: {', '.join(unreadable[:5])}"
                                f"{' ...' if len(unreadable) > 5 else ''}. Nothing was uploaded.")
    return pairs


def upload_pairs(source: str | os.PathLike[str] | Any, remote_dir: str = "", extract: bool = False
                 ) -> list[tuple[Target, str]]:
    """What an upload sends, as (local path, resource-relative path) pairs, checked locally before anything moves;
    ``XnatBadInputError`` for what XNAT could not store as asked:

    - ``extract=True`` with a ``remote_dir``: XNAT unpacks an archive at the resource root and ignores the folder
      in the URL (``CatalogUtils.storeCatalogEntry``), so the entries could never be found under ``remote_dir``;
    - ``extract=True`` with anything but a zip XNAT can read (see :func:`check_zip`);
    - a 0-byte file: XNAT refuses an empty file body with a 500 ("In-body File posts must include the file
      directly as the body of the message ..."). One empty file refuses the whole upload, so that a folder is
      never stored in part.

    ``source`` may be on object storage (see :mod:`.storage`): its files are listed there, and a zip to extract
    is read there (a zip's directory is at its end: the file system reads that part alone).
    """
    src = as_target(source, "Upload source")
    if extract and remote_dir.strip("/"):
        raise XnatBadInputError(
            f"extract=True cannot put the entries under remote_dir={remote_dir!r}: XNAT unpacks an archive at the "
            "resource root and ignores the folder in the upload URL. Put the folder inside the zip, or upload "
            "without extract. Nothing was uploaded.")
    pairs: list[tuple[Target, str]] = (local_files(src, remote_dir) if isinstance(src, Path)  # type: ignore[assignment]
                                       else storage_files(src, remote_dir))
    if extract:
        if not (len(pairs) == 1 and pairs[0][0] == src and _is_zip(src)):
            raise XnatBadInputError(f"extract=True needs a zip file; {src} is not one.")
        check_zip(src)
        return pairs
    empty = [rel for p, rel in pairs if size_of(p) == 0]
    if empty:
        raise XnatBadInputError(
            f"Refusing to upload {len(empty)} empty (0-byte) file(s): {', '.join(empty[:5])}"
            f"{' ...' if len(empty) > 5 else ''}. XNAT refuses an empty file body (500 \"In-body File posts must "
            "include the file\"); nothing was uploaded. Leave them out, or zip the files and upload the zip with "
            "extract=True (XNAT unpacks empty entries).")
    return pairs


def size_of(source: Target) -> int:
    return source.size() if isinstance(source, FsPath) else source.stat().st_size


def _is_zip(source: Target) -> bool:
    if isinstance(source, Path):
        return source.is_file() and zipfile.is_zipfile(source)
    try:
        with source.open_read() as fh:
            return zipfile.is_zipfile(fh)
    except (OSError, ValueError):  # fsspec files refuse a seek before the start with ValueError
        return False


def _zip(archive: Target) -> zipfile.ZipFile:
    """A zip read in place: a local file, or a storage file read in blocks (the directory first, from its end)."""
    return zipfile.ZipFile(archive) if isinstance(archive, Path) else _StorageZip(archive)


class _StorageZip(zipfile.ZipFile):
    """A ``ZipFile`` on a storage file that closes the file with it (a ``ZipFile`` given a file object leaves
    it open)."""

    def __init__(self, archive: FsPath):
        self._raw = archive.open_read()
        try:
            super().__init__(self._raw)
        except BaseException:
            self._raw.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def check_zip(archive: Target) -> None:
    """Refuse, before sending, a zip XNAT cannot unpack: it reads uploads forward with
    ``java.util.zip.ZipInputStream``, which throws on an encrypted entry, a compression method other than
    STORED or DEFLATED, and a STORED entry with a data descriptor (what a zip streamed to a pipe has)."""
    with _zip(archive) as zf:
        for info in zf.infolist():
            problem = ("is encrypted" if info.flag_bits & 0x1 else
                       f"uses compression method {info.compress_type}"
                       if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) else
                       "is STORED with a data descriptor" if info.flag_bits & 0x8
                       and info.compress_type != zipfile.ZIP_DEFLATED else None)
            if problem:
                raise XnatBadInputError(f"{archive}: entry {info.filename!r} {problem}, which XNAT's zip reader "
                                        "(java.util.zip.ZipInputStream) refuses; rewrite the zip with STORED or "
                                        "DEFLATED entries. Nothing was uploaded.")


def extract_name(archive: Target) -> str:
    """The name a zip is sent under with ``extract=true``: XNAT picks the extractor by the name's suffix
    (``.zip`` or ``.zar``, case-sensitive) and would store a zip of any other name as one file."""
    return archive.name if archive.name.endswith((".zip", ".zar")) else f"{archive.name}.zip"


class UploadMixin:
    transport: XnatTransport

    def ensure_resource(self, path: str, resource: str, format: str | None = None,
                        content: str | None = None) -> None:
        """Create ``{path}/resources/{resource}`` unless it exists (409 means it does)."""
        params = {k: v for k, v in (("format", format), ("content", content)) if v}
        try:
            self.transport.request("PUT", f"{path}/resources/{q(resource)}", params=params, ok_statuses=(409,))
        except XnatNotFoundError as exc:
            raise XnatNotFoundError(f"Cannot create resource {resource!r}: {exc}", method=exc.method,
                                    path=exc.path, status=404) from exc

    def upload(
        self,
        source: str | os.PathLike[str],
        path: str,
        resource: str,
        *,
        remote_dir: str = "",
        overwrite: str = "skip_identical",
        extract: bool = False,
        format: str | None = None,
        content: str | None = None,
        tags: str | None = None,
    ) -> Manifest:
        """Upload a file or a directory tree to ``{path}/resources/{resource}``; verified; returns a manifest.

        ``path`` is an archive object path (see ``protocol.base_path``), at project, subject, experiment,
        scan or assessor level. With ``extract=True`` a zip is sent whole and unpacked by XNAT at the resource
        root (so ``remote_dir`` must stay empty), and its entries are verified against the catalog afterwards.
        0-byte files are refused before anything is sent (XNAT cannot store them as a file upload), see
        :func:`upload_pairs`. ``source`` may be on object storage (an ``ObjectStoragePath``, see :mod:`.storage`).
        """
        if overwrite not in POLICIES:
            raise XnatBadInputError(f"overwrite must be one of {POLICIES}, not {overwrite!r}")
        if not resource or "/" in resource:
            raise XnatBadInputError(f"Invalid resource label {resource!r}.")
        src = as_target(source, "Upload source")
        pairs = upload_pairs(src, remote_dir, extract)
        if extract:
            expected = self._zip_entries(src)
        else:
            sizes = {rel: size_of(p) for p, rel in pairs}
        self.ensure_resource(path, resource, format, content)
        res_path = f"{path}/resources/{q(resource)}"
        remote = {f.path: f for f in self.list_files(res_path)}  # type: ignore[attr-defined]
        if not extract:
            # A file the catalog already lists is hashed now, for the policy; any other file is hashed while
            # it is sent (one read of the file instead of two), and checked against the catalog afterwards.
            expected = {rel: (sizes[rel], (md5_of(p) if isinstance(p, Path) else md5_fs(p)) if rel in remote else "")
                        for p, rel in pairs}
        todo, skipped = self._apply_policy(res_path, expected, remote, overwrite)
        params = {k: v for k, v in (("format", format), ("content", content), ("tags", tags)) if v}
        if overwrite == "overwrite":
            params["overwrite"] = "true"
        sending = [(src, extract_name(src))] if extract and todo else [(p, rel) for p, rel in pairs if rel in todo]
        progress = Progress(f"Upload to {self.transport.redact(res_path)}", sum(size_of(p) for p, _ in sending),
                            len(sending), interval=self.transport.config.progress_interval)
        token = _PROGRESS.set(progress)  # the call's progress, for each _put
        try:
            kept = self._send_all(res_path, sending, expected, params, extract)
        finally:
            _PROGRESS.reset(token)
        manifest = self._check_upload(res_path, expected, skipped, kept)
        if sending:
            progress.finish()
        return manifest

    def _send_all(self, res_path: str, sending: list[tuple[Target, str]], expected: dict[str, tuple[int, str]],
                  params: dict[str, str], extract: bool) -> set[str]:
        """PUT each file (or the zip, to extract), one at a time; the paths XNAT kept its own copy of
        (``duplicates``). The MD5 of each file sent is filled into ``expected`` where it was not known."""
        kept: set[str] = set()
        for local, rel in sending:
            if extract:
                dups, _ = self._put(res_path, local, rel, {**params, "extract": "true"})
                kept |= {r for r in expected if r in dups}
                continue
            dups, sent_md5 = self._put(res_path, local, rel, params)
            kept |= dups
            if not expected[rel][1]:
                expected[rel] = (expected[rel][0], sent_md5)
        return kept

    @staticmethod
    def _zip_entries(archive: Target) -> dict[str, tuple[int, str]]:
        """Size and MD5 of every file entry, under the path XNAT stores it at: the entry's name, from the
        resource root."""
        entries: dict[str, tuple[int, str]] = {}
        with _zip(archive) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                check_relpath(info.filename, "the resource")  # refuse unsafe names before sending
                h = hashlib.md5()
                with zf.open(info) as fh:
                    for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(chunk)
                entries[info.filename] = (info.file_size, h.hexdigest())
        return entries

    def _apply_policy(self, res_path: str, expected: dict[str, tuple[int, str]], remote: dict[str, RemoteFile],
                      policy: str) -> tuple[set[str], set[str]]:
        todo, skipped, clash = set(), set(), []
        for rel, (size, md5) in expected.items():
            there = remote.get(rel)
            if there is None:
                todo.add(rel)
            elif there.digest == md5 and (there.size in (None, size)):
                skipped.add(rel)
            elif policy == "overwrite":
                todo.add(rel)
            else:
                clash.append(rel)
        if policy == "fail":
            clash += sorted(skipped)
        if clash:
            raise XnatConflictError(f"{res_path}: {len(clash)} file(s) already exist with "
                                    f"{'other' if policy != 'fail' else 'any'} content: {sorted(clash)[:5]} "
                                    f"(overwrite={policy!r}; nothing was uploaded)", path=res_path, status=409)
        return todo, skipped

    def _put(self, res_path: str, local: Target, rel: str, params: dict[str, str]) -> tuple[set[str], str]:
        """PUT one file; returns the paths XNAT said it already had and kept (its ``duplicates`` answer) and
        the MD5 of the bytes sent, computed while sending them. A storage file streams from its file system."""
        url = f"{res_path}/files/{qpath(rel)}"
        progress = _PROGRESS.get()
        readers: list[_HashingReader] = []
        with open_read(local) as fh:

            def body() -> object:  # a retry sends the file again from its start, hashing it afresh
                for r in readers:
                    r.close()
                    progress.credit(-r.sent)
                fh.seek(0)
                size = local.size() if isinstance(local, FsPath) else os.fstat(fh.fileno()).st_size
                readers.append(_HashingReader(fh, size, progress))
                return readers[-1]

            try:
                resp = self.transport.request("PUT", url, params=params, data=body,
                                            headers={"Content-Type": "application/octet-stream"})
                sent_md5 = readers[-1].hexdigest()
            finally:
                for r in readers:
                    r.close()
        progress.file_done()
        answer = resp.text.strip()
        if not answer.startswith("{"):
            return set(), sent_md5
        try:
            duplicates = json.loads(answer).get("duplicates") or []
        except (ValueError, AttributeError):
            return set(), sent_md5
        if duplicates:
            # Nothing was stored for these. A retried PUT that had already stored the file also lands here, so
            # this is not an error by itself: _check_upload compares what the catalog holds with the local file.
            log.info("XNAT kept its existing %s (duplicates answer); checking it against the local file",
                     ", ".join(map(str, duplicates[:5])))
        return {str(d) for d in duplicates}, sent_md5

    def _check_upload(self, res_path: str, expected: dict[str, tuple[int, str]], skipped: set[str],
                      kept: set[str] = frozenset()) -> Manifest:
        remote = {f.path: f for f in self.list_files(res_path)}  # type: ignore[attr-defined]
        manifest, problems = Manifest(), []
        for rel, (size, md5) in sorted(expected.items()):
            there = remote.get(rel)
            if there is None:
                problems.append(f"{rel}: not in the catalog after upload")
            elif there.size is not None and there.size != size:
                problems.append(f"{rel}: catalog lists {there.size} bytes, local file has {size}")
            elif there.digest and there.digest != md5:
                problems.append(f"{rel}: catalog MD5 {there.digest} differs from the local {md5}")
            else:
                manifest.add(rel, size, md5, rel in skipped, uri=there.uri)
                continue
            if rel in kept:
                problems[-1] += " (XNAT answered 'duplicates': it kept its own copy and stored nothing)"
        if problems:
            raise XnatTransferError(f"Upload to {res_path} not verified: " + "; ".join(problems[:5]), path=res_path)
        return manifest


class _HashingReader:
    """A file body for ``requests`` that computes the MD5 of what is read.

    ``__len__`` gives ``requests`` the Content-Length (no chunked encoding). Each ``read`` fills one buffer of a
    small recycled pool (``readinto``: no new bytes object per block) and returns a view of it, which urllib3 sends
    before it reads again; the buffer goes to the MD5 (a helper thread for big files, in parallel with sending) and
    back to the pool once hashed. Blocks of :data:`~.hashed_stream.BUFFER` (256 KiB) rather than urllib3's 16 KiB keep
    the per-block Python overhead small, and stay in the CPU's cache from the file through MD5 to the socket.
    """

    def __init__(self, fh: IO[bytes], size: int, progress: Progress = NO_PROGRESS):
        self._fh = fh
        self._size = size
        self._progress = progress
        self._hasher = Hasher(hashlib.md5(), threaded=size >= THREADED_MD5_MIN)
        self._readinto = getattr(fh, "readinto", None)
        self.sent = 0

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> memoryview | bytes:
        buf = self._hasher.take()
        view = memoryview(buf)
        if self._readinto is not None:
            got = self._readinto(view)
        else:  # a file object without readinto
            data = self._fh.read(len(view))
            got = len(data)
            view[:got] = data
        if not got:
            self._hasher.put_back(buf)
            return b""
        self._hasher.give(buf, got)
        self.sent += got
        self._progress.add(got)
        return view[:got]

    def close(self) -> None:
        self._hasher.close()

    def hexdigest(self) -> str:
        self._hasher.close()
        return str(self._hasher.h.hexdigest())
