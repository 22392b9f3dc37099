"""A zip upload read the way XNAT reads it: forward only, with the rules of ``java.util.zip.ZipInputStream``.

XNAT's DICOM-zip import handler (``DicomZipImporter``) reads the request body with ``ZipInputStream``, not with
a random-access reader: local headers in order, never the central directory. A zip that Python's
``zipfile.ZipFile`` opens happily can still be refused there (the first case met: STORED entries with a data
descriptor, which any zip streamed to an unseekable sink has), so the emulator reads uploads with these rules.

The rules, from OpenJDK 17's ``ZipInputStream`` (``readLOC``, ``read``, ``readEnd``), checked against the JDK
itself by ``tests/oracles``:

- entries are local headers (``PK\\x03\\x04``) in order; anything else where a header should start (the central
  directory, garbage, fewer than 30 bytes) ends the zip, without error;
- an encrypted entry (flag bit 0), or a data descriptor (flag bit 3) on an entry that is not DEFLATED, is refused
  when its header is read; any method but STORED (0) or DEFLATED (8) is refused when its data is read;
- a STORED entry is the next ``size`` bytes of the LOC (ZIP64 extra when the LOC sizes are 0xFFFFFFFF), its
  CRC-32 checked when the last byte is read; the compressed size is not looked at;
- a DEFLATED entry is inflated until the deflate stream ends; then the data descriptor is read when flag bit 3
  is set (its ``PK\\x07\\x08`` signature optional; its sizes are 8 bytes only when the entry's inflated or
  compressed bytes passed 4 GiB: Java 17 does not look at the LOC's ZIP64 extra for that, so a ZIP64 entry under
  4 GiB is refused), and sizes and CRC-32 are checked;
- the stream ending inside a header's name or extra, an entry's data or a descriptor is an error.

Java throws a ``ZipException`` or an ``EOFException`` there; this module raises :class:`ZipInputError` with
Java's message. Entries are read a chunk at a time (inflating with a bounded output), so memory stays flat
whatever the upload's size or compression ratio.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

LOC_SIG = b"PK\x03\x04"
EXT_SIG = 0x08074B50
MAGIC32 = 0xFFFFFFFF
ZIP64_EXTRA = 0x0001
STORED, DEFLATED = 0, 8
FLAG_ENCRYPTED, FLAG_DESCRIPTOR = 0x1, 0x8
BUF = 1 << 16
ZIP_EXCEPTION, EOF_EXCEPTION = "java.util.zip.ZipException", "java.io.EOFException"


class ZipInputError(Exception):
    """Where ``ZipInputStream`` throws: ``java_class`` is what Java throws there, the message Java's (an
    ``EOFException`` from ``readFully`` has none in Java; it gets one here)."""

    def __init__(self, message: str, java_class: str = ZIP_EXCEPTION):
        super().__init__(message)
        self.java_class = java_class


@dataclass
class ZipEntryHeader:
    """What a local file header says. ``crc``, ``csize`` and ``size`` are None when a data descriptor follows."""

    name: str
    flag: int
    method: int
    crc: int | None
    csize: int | None
    size: int | None

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")  # java.util.zip.ZipEntry.isDirectory


class _Input:
    """The upload read forward, with bytes pushed back (Java wraps the stream in a ``PushbackInputStream``)."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._back = b""

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; empty only at the end of the upload."""
        if self._back:
            out, self._back = self._back[:n], self._back[n:]
            return out
        return self._raw.read(n)

    def read_fully(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or :class:`ZipInputError` (Java's ``readFully``: ``EOFException``)."""
        out = bytearray()
        while len(out) < n:
            chunk = self.read(n - len(out))
            if not chunk:
                raise ZipInputError("the upload ends inside a zip header or data descriptor", EOF_EXCEPTION)
            out += chunk
        return bytes(out)

    def unread(self, data: bytes) -> None:
        self._back = data + self._back


def _read_header(src: _Input) -> ZipEntryHeader | None:
    """The next local header (``readLOC``), or None where Java's ``getNextEntry`` returns null."""
    try:
        head = src.read_fully(30)
    except ZipInputError:
        return None  # Java catches the EOFException of a header cut short: the zip just ends
    if head[:4] != LOC_SIG:
        return None  # the central directory, or anything else: the end of the entries
    flag, method = struct.unpack_from("<HH", head, 6)
    crc, csize, size, name_len, extra_len = struct.unpack_from("<IIIHH", head, 14)
    raw_name = src.read_fully(name_len)
    try:  # ZipInputStream(InputStream) decodes names as UTF-8 whatever flag bit 11 says
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError as exc:  # not an IOException in Java: XNAT's answer may be a 500 there
        raise ZipInputError(f"MALFORMED entry name: {exc}", "java.lang.IllegalArgumentException") from exc
    if flag & FLAG_ENCRYPTED:
        raise ZipInputError("encrypted ZIP entry not supported")
    entry = ZipEntryHeader(name, flag, method, None, None, None)
    if flag & FLAG_DESCRIPTOR:
        if method != DEFLATED:
            raise ZipInputError("only DEFLATED entries can have EXT descriptor")
    else:
        entry.crc, entry.csize, entry.size = crc, csize, size
    extra = src.read_fully(extra_len)
    if entry.size == MAGIC32 or entry.csize == MAGIC32:
        _zip64_sizes(entry, extra)
    return entry


def _zip64_sizes(entry: ZipEntryHeader, extra: bytes) -> None:
    """The sizes of a ZIP64 extra field (``ZipEntry.setExtra0`` for a LOC: only one with both sizes counts)."""
    off = 0
    while off + 4 < len(extra):
        tag, length = struct.unpack_from("<HH", extra, off)
        off += 4
        if off + length > len(extra):
            return
        if tag == ZIP64_EXTRA and length >= 16:
            entry.size, entry.csize = struct.unpack_from("<QQ", extra, off)
        off += length


class ZipEntryStream:
    """One entry's bytes, checked as Java checks them: the error comes from the read that meets the problem."""

    def __init__(self, src: _Input, entry: ZipEntryHeader):
        self._src, self.entry = src, entry
        self._crc = 0
        self._written = 0  # bytes handed out
        self._done = False
        self._remaining = entry.size or 0  # STORED
        self._inflater = zlib.decompressobj(-15) if entry.method == DEFLATED else None
        self._fed = 0  # DEFLATED: compressed bytes given to the inflater

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the entry (all of it for a negative ``n``); empty at its end."""
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(BUF), b""))
        if self._done or n == 0:
            return b""
        if self.entry.method == STORED:
            out = self._read_stored(n)
        elif self.entry.method == DEFLATED:
            out = self._inflate(n)
        else:
            raise ZipInputError("invalid compression method")
        self._crc = zlib.crc32(out, self._crc)
        self._written += len(out)
        if self.entry.method == STORED and out and self._remaining == 0 and self._crc != self.entry.crc:
            raise ZipInputError(_crc_message(self.entry.crc or 0, self._crc))
        return out

    def drain(self) -> None:
        """Read what is left (``closeEntry``, before the next header): its errors are raised here."""
        while self.read(BUF):
            pass

    def _read_stored(self, n: int) -> bytes:
        if self._remaining <= 0:
            self._done = True
            return b""
        out = self._src.read(min(n, self._remaining))
        if not out:
            raise ZipInputError("unexpected EOF")
        self._remaining -= len(out)
        return out

    def _inflate(self, n: int) -> bytes:
        z = self._inflater
        assert z is not None
        out = b""
        try:
            while not z.eof:
                out = z.decompress(z.unconsumed_tail, n)  # what is left of the last chunk (zlib may also end here)
                if out or z.eof:
                    break
                chunk = self._src.read(BUF)
                if not chunk:
                    raise ZipInputError("Unexpected end of ZLIB input stream", EOF_EXCEPTION)
                self._fed += len(chunk)
                out = z.decompress(chunk, n)
                if out:
                    break
        except zlib.error as exc:  # Java's message is zlib's own ("invalid stored block lengths"...)
            raise ZipInputError(str(exc).split(": ", 1)[-1] or "Invalid ZLIB data format") from exc
        if out:
            return out
        self._end()
        return b""

    def _end(self) -> None:
        """After the deflate stream (``readEnd``): give back what follows it, read the descriptor, check."""
        z = self._inflater
        assert z is not None
        self._done = True
        self._src.unread(z.unused_data)
        consumed = self._fed - len(z.unused_data)
        e = self.entry
        if e.flag & FLAG_DESCRIPTOR:
            wide = self._written > MAGIC32 or consumed > MAGIC32  # ZIP64 descriptor; Java 17 ignores the LOC
            fmt = "<IQQ" if wide else "<III"
            data = self._src.read_fully(4 + struct.calcsize(fmt))
            if struct.unpack_from("<I", data)[0] == EXT_SIG:
                e.crc, e.csize, e.size = struct.unpack_from(fmt, data, 4)
            else:  # no signature: the descriptor starts at once and the last 4 bytes read belong to what follows
                e.crc, e.csize, e.size = struct.unpack_from(fmt, data, 0)
                self._src.unread(data[-4:])
        if e.size != self._written:
            raise ZipInputError(f"invalid entry size (expected {e.size} but got {self._written} bytes)")
        if e.csize != consumed:
            raise ZipInputError(f"invalid entry compressed size (expected {e.csize} but got {consumed} bytes)")
        if e.crc != self._crc:
            raise ZipInputError(_crc_message(e.crc or 0, self._crc))


def _crc_message(expected: int, got: int) -> str:
    return f"invalid entry CRC (expected 0x{expected:x} but got 0x{got:x})"


def read_zip(raw: IO[bytes]) -> Iterator[tuple[ZipEntryHeader, ZipEntryStream]]:
    """Every entry of a zip upload in order, directories included, as ``ZipInputStream.getNextEntry`` gives them.

    Read each entry's stream before asking for the next: what is left of it is then read and checked (Java's
    ``closeEntry``). Raises :class:`ZipInputError` where Java would throw; what was yielded before stays valid.
    """
    src = _Input(raw)
    while (entry := _read_header(src)) is not None:
        stream = ZipEntryStream(src, entry)
        yield entry, stream
        stream.drain()
