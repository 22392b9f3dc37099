"""Receiving request bodies onto disk: raw bodies and multipart forms, streamed and digested on the way.

Uploads never sit in memory: each file goes straight to a temporary file while its MD5 is computed, and the
caller decides where it belongs. python-multipart's streaming parser does the multipart framing.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from python_multipart.multipart import MultipartParser, parse_options_header
except ModuleNotFoundError as exc:  # python-multipart is in the `testing` extra: say so, not a bare import error
    from .extra import missing_testing_extra

    if (error := missing_testing_extra(exc)) is None:
        raise
    raise error from exc

from .http import CHUNK, Request, XnatHttpError


@dataclass
class ReceivedFile:
    field: str
    filename: str
    path: Path
    size: int
    md5: str


class PipelinedMd5:
    """MD5 of a stream computed on a helper thread, so that hashing overlaps receiving and writing.

    MD5 (about 700 MB/s in CPython, which releases the GIL for large buffers) is the slowest step of an upload
    over loopback; overlapping it with the socket reads and file writes gained 10-20 % (see BENCHMARKS.md). The
    first chunk is hashed in line (small bodies never start a thread); later ones go through a bounded queue,
    which caps the memory held at ``depth`` chunks.
    """

    def __init__(self, depth: int = 8):
        self._h = hashlib.md5()
        self._chunks = 0
        self._q: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread: threading.Thread | None = None

    def update(self, data: bytes) -> None:
        self._chunks += 1
        if self._chunks == 1:
            self._h.update(data)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="xnat-md5")
            self._thread.start()
        self._q.put(data)

    def _run(self) -> None:
        while (data := self._q.get()) is not None:
            self._h.update(data)

    def hexdigest(self) -> str:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        return self._h.hexdigest()

    close = hexdigest


class _NoDigest:
    def update(self, data: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return ""

    close = hexdigest


def spool(req: Request, dest: Path, digest: bool = True, keep_partial: bool = False) -> tuple[int, str]:
    """Write the raw request body to ``dest``; returns (size, md5), the md5 empty when not ``digest``. A body that
    breaks off raises, and leaves ``dest`` holding what arrived when ``keep_partial`` (else removes it)."""
    h, size = (PipelinedMd5() if digest else _NoDigest()), 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as f:
            for chunk in req.body.chunks():
                f.write(chunk)
                h.update(chunk)
                size += len(chunk)
    except BaseException:
        h.close()
        if not keep_partial:
            dest.unlink(missing_ok=True)
        raise
    return size, h.hexdigest()


def is_multipart(req: Request) -> bool:
    return req.content_type == "multipart/form-data"


def receive_multipart(req: Request, tmp_dir: Path) -> tuple[list[tuple[str, str]], list[ReceivedFile]]:
    """Parse a multipart body: form fields (small, kept in memory) and files (streamed to ``tmp_dir``)."""
    _, opts = parse_options_header(req.headers.get("Content-Type") or "")
    boundary = opts.get(b"boundary")
    if not boundary:
        raise XnatHttpError(400, "Multipart request without a boundary.")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    parts = _Parts(tmp_dir)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        for chunk in req.body.chunks(CHUNK):
            parser.write(chunk)
        parser.finalize()
    except XnatHttpError:
        cleanup(parts.files, parts.state)
        raise
    except Exception as exc:
        cleanup(parts.files, parts.state)
        raise XnatHttpError(400, f"Malformed multipart body: {exc}") from exc
    return parts.fields, parts.files


class _Parts:
    """The multipart parser's callbacks: each part's headers, then its bytes into a field or a file."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.fields: list[tuple[str, str]] = []
        self.files: list[ReceivedFile] = []
        self.state: dict = {}  # the part being read (its open file, for cleanup)

    def callbacks(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished")}

    def on_part_begin(self) -> None:
        self.state.update(headers={}, name="", value=bytearray(), fh=None, md5=None, size=0, filename=None)

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.state["hf"] = self.state.get("hf", b"") + data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.state["hv"] = self.state.get("hv", b"") + data[start:end]

    def on_header_end(self) -> None:
        state = self.state
        state["headers"][state.pop("hf", b"").decode("latin-1").lower()] = state.pop("hv", b"")

    def on_headers_finished(self) -> None:
        state = self.state
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        if filename is not None:
            name = os.path.basename(filename.decode("utf-8", "replace").replace("\\", "/")) or "upload"
            path = self.tmp_dir / f".mp-{len(self.files)}-{os.urandom(4).hex()}.part"
            state.update(filename=name, path=path, fh=open(path, "wb"), md5=PipelinedMd5())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        state, chunk = self.state, data[start:end]
        if state["fh"] is not None:
            state["fh"].write(chunk)
            state["md5"].update(chunk)
            state["size"] += len(chunk)
        else:
            state["value"] += chunk
            if len(state["value"]) > 1 << 20:
                raise XnatHttpError(413, "Form field too large.")

    def on_part_end(self) -> None:
        state = self.state
        if state["fh"] is not None:
            state["fh"].close()
            self.files.append(ReceivedFile(state["name"], state["filename"], state["path"], state["size"],
                                           state["md5"].hexdigest()))
        else:
            self.fields.append((state["name"], state["value"].decode("utf-8", "replace")))


def cleanup(files: list[ReceivedFile], state: dict | None = None) -> None:
    if state and state.get("fh") is not None and not state["fh"].closed:
        state["fh"].close()
        state["md5"].close()  # stops its helper thread
        state["path"].unlink(missing_ok=True)
    for f in files:
        f.path.unlink(missing_ok=True)
