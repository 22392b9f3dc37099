"""The bytes of a transfer moved and hashed together: a response body read into recycled buffers, written, and
MD5-hashed on a helper thread, so that a verified transfer runs at the rate of MD5 alone.

Shared by the downloads (:func:`receive`, into a ``.part`` or an object-storage stream), the uploads (a file
hashed while it is sent: :class:`Hasher`) and object storage. Nothing here knows about XNAT: it is bytes, buffers
and digests, and what a broken transfer looks like (:data:`BROKEN`). Whether the result matches the catalog is
:func:`catalog_mismatch`.
"""

from __future__ import annotations

import hashlib
import http.client
import mmap
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3

from .models import RemoteFile
from .part_file import aligned_buffer
from .progress import NO_PROGRESS, Progress

CHUNK = 1 << 20
#: What the HTTP stack raises when a transfer breaks (the connection reset, a read timing out, a body cut short):
#: a transfer to retry or resume, not a server's answer.
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
    errors (:data:`BROKEN`).

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

    def __init__(self, h: Any, threaded: bool, size: int = BUFFER, count: int = BUFFERS, aligned: bool = False):
        self.h = h
        self._free: queue.SimpleQueue[bytearray | mmap.mmap] = queue.SimpleQueue()
        for _ in range(count if threaded else 1):  # page-aligned when they are to be written with O_DIRECT
            self._free.put(aligned_buffer(size) if aligned else bytearray(size))
        self._todo: queue.SimpleQueue[tuple[bytearray | mmap.mmap, int] | None] | None = None
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

    def take(self) -> bytearray | mmap.mmap:
        return self._free.get()

    def give(self, buf: bytearray | mmap.mmap, n: int) -> None:
        if self._todo is None:
            self.h.update(memoryview(buf)[:n])
            self._free.put(buf)
        else:
            self._todo.put((buf, n))

    def put_back(self, buf: bytearray | mmap.mmap) -> None:
        self._free.put(buf)

    def close(self) -> None:
        if self._thread is not None and self._todo is not None:
            self._todo.put(None)
            self._thread.join()
            self._thread = None


def receive(body: Body, write: Callable[[memoryview], Any], h: Any, expected: int | None,
            progress: Progress = NO_PROGRESS, aligned: bool = False) -> int:
    """The whole body through ``write`` and into the MD5 ``h``; returns the bytes received.

    Buffer by buffer: read (filled to the brim), written, then hashed, on a helper thread for a body of
    :data:`THREADED_MD5_MIN` or more (or of unknown length), so that a verified download runs at the rate of MD5
    alone; ``aligned`` buffers (page-aligned) for a ``write`` that uses ``O_DIRECT``. Only whole buffers are
    written, and the last one once the body has ended where ``expected`` says: when the
    transfer breaks, what was written (and hashed: ``h`` is always the MD5 of exactly that) is whole buffers, and
    the bytes of the buffer being filled are dropped. A body shorter than ``expected`` raises
    ``ChunkedEncodingError`` (:data:`BROKEN`) after keeping what came before."""
    hasher = Hasher(h, threaded=expected is None or expected >= THREADED_MD5_MIN, aligned=aligned)
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


def catalog_mismatch(remote: RemoteFile, size: int, md5: str) -> str | None:
    """What is wrong with ``size`` bytes of MD5 ``md5`` received for ``remote``, against the catalog's size and
    digest; None when they match (or the catalog lists neither)."""
    if remote.size is not None and size != remote.size:
        return f"got {size} bytes, the catalog lists {remote.size}"
    if remote.digest and md5 != remote.digest:
        return f"MD5 {md5} does not match the catalog digest {remote.digest}"
    return None
