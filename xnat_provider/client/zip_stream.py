"""A zip read forward, as it arrives: the zip fast path of downloads extracts entries while the rest is in transit.

A zip's directory is at its end, but every entry is also preceded by a local header (name, method, sizes), so a
zip can be read front to back, as ``java.util.zip.ZipInputStream`` (XNAT's own reader) does: a DEFLATED entry ends
where its deflate stream ends; a STORED one has its size in the header, or (a zip written to a pipe, with a data
descriptor after the data) the size the caller knows from the catalog listing. The central directory at the end is
read too, so that what only it says (which entries are links) is checked before anything extracted is used.

Anything this reader cannot follow raises :class:`ZipStreamError` (the caller then falls back to one request per
file): a bad signature, an encrypted entry, a method other than STORED and DEFLATED, a STORED entry with a data
descriptor whose size is not known, sizes that disagree, a stream that ends early.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
DESCRIPTOR_SIG = b"PK\x07\x08"
END_SIGS = (b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07")
STORED, DEFLATED = 0, 8
READ = 64 * 1024
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
U32 = 0xFFFFFFFF


class ZipStreamError(Exception):
    """The stream is not a zip this reader can follow to its end."""


@dataclass
class Entry:
    """An entry's local header: ``offset`` of that header in the stream (the central directory names it too)."""

    name: str
    method: int
    flags: int
    crc: int
    compressed: int | None  # None: not in the header (a data descriptor follows the data)
    size: int | None
    offset: int
    zip64: bool

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")


@dataclass
class CentralEntry:
    name: str
    external_attr: int

    @property
    def is_link(self) -> bool:
        return (self.external_attr >> 16) & 0o170000 == 0o120000


class ForwardZip:
    """Entries of a zip read from ``read(n)`` (up to ``n`` bytes, ``b""`` at the end), front to back.

    ``for entry in z.entries(): ...`` with ``z.data(entry, size)`` consumed (or not: it is skipped then) before the
    next entry; afterwards ``z.central`` maps each entry's offset to what the central directory says of it.
    ``size`` is the caller's expected size, needed only for a STORED entry with a data descriptor."""

    def __init__(self, read: Callable[[int], bytes], head: bytes = b""):
        self._read = read
        self._buf = bytearray(head)
        self._offset = 0  # stream offset of self._buf[0]
        self.central: dict[int, CentralEntry] = {}
        self._open: Iterator[bytes] | None = None

    # ---- bytes ---------------------------------------------------------------------------------------
    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            more = self._read(max(READ, n - len(self._buf)))
            if not more:
                return False
            self._buf += more
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise ZipStreamError(f"the zip ends early (at byte {self._offset + len(self._buf)})")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._offset += n
        return out

    def _chunks(self, n: int) -> Iterator[bytes]:
        """Exactly ``n`` bytes, in pieces."""
        while n > 0:
            if not self._buf and not self._fill(1):
                raise ZipStreamError("the zip ends inside an entry")
            piece = bytes(self._buf[:n])
            del self._buf[:len(piece)]
            self._offset += len(piece)
            n -= len(piece)
            yield piece

    # ---- entries -------------------------------------------------------------------------------------
    def entries(self) -> Iterator[Entry]:
        while True:
            if self._open is not None:
                for _ in self._open:  # the caller did not read this entry's data: skip it
                    pass
                self._open = None
            if not self._fill(4):
                raise ZipStreamError("the zip ends before its central directory")
            sig = bytes(self._buf[:4])
            if sig == LOCAL_SIG:
                yield self._local()
            elif sig == CENTRAL_SIG or sig in END_SIGS:
                self._directory()
                return
            else:
                raise ZipStreamError(f"no zip header at byte {self._offset}")

    def _local(self) -> Entry:
        offset = self._offset
        (_sig, _ver, flags, method, _t, _d, crc, csize, usize, nlen, xlen) = _LOCAL.unpack(self._take(_LOCAL.size))
        name_raw = self._take(nlen)
        extra = self._take(xlen)
        name = name_raw.decode("utf-8" if flags & 0x800 else "cp437")
        if flags & 0x1:
            raise ZipStreamError(f"entry {name!r} is encrypted")
        if method not in (STORED, DEFLATED):
            raise ZipStreamError(f"entry {name!r} uses compression method {method}")
        zip64 = _zip64_sizes(extra)
        if zip64 is not None:
            usize = zip64[0] if usize == U32 else usize
            csize = zip64[1] if csize == U32 else csize
        descriptor = bool(flags & 0x8)
        entry = Entry(name, method, flags, crc, None if descriptor else csize, None if descriptor else usize,
                      offset, zip64 is not None)
        self._open = self._data(entry, None)
        return entry

    def data(self, entry: Entry, size: int | None) -> Iterator[bytes]:
        """The entry's uncompressed bytes (``size``: what the caller expects, from its listing)."""
        self._open = self._data(entry, size)
        return self._open

    def _data(self, entry: Entry, size: int | None) -> Iterator[bytes]:
        got = 0
        if entry.method == STORED:
            n = entry.size if entry.size is not None else size
            if n is None:
                raise ZipStreamError(f"entry {entry.name!r} is STORED with a data descriptor and its size is unknown")
            for piece in self._chunks(n):
                got += len(piece)
                yield piece
            compressed = n
        else:
            d = zlib.decompressobj(-15)
            compressed = 0
            while not d.eof:
                if not self._buf and not self._fill(1):
                    raise ZipStreamError(f"the zip ends inside entry {entry.name!r}")
                piece = bytes(self._buf[:READ])
                del self._buf[:len(piece)]
                try:
                    out = d.decompress(piece)
                except zlib.error as exc:
                    raise ZipStreamError(f"entry {entry.name!r} does not inflate: {exc}") from None
                used = len(piece) - len(d.unused_data)
                if d.unused_data:
                    self._buf[:0] = d.unused_data
                self._offset += used
                compressed += used
                if out:
                    got += len(out)
                    yield out
        if entry.flags & 0x8:
            self._descriptor(entry, compressed, got)
        elif (entry.compressed, entry.size) != (compressed, got):
            raise ZipStreamError(f"entry {entry.name!r}: its header gives {entry.size} bytes, it holds {got}")

    def _descriptor(self, entry: Entry, compressed: int, size: int) -> None:
        if not self._fill(4):
            raise ZipStreamError(f"the zip ends after entry {entry.name!r}")
        if bytes(self._buf[:4]) == DESCRIPTOR_SIG:
            self._take(4)
        width = 8 if entry.zip64 else 4
        raw = self._take(4 + 2 * width)
        _crc, csize, usize = struct.unpack("<IQQ" if width == 8 else "<III", raw)
        if (csize, usize) != (compressed, size):
            raise ZipStreamError(f"entry {entry.name!r}: its data descriptor gives {usize} bytes, it holds {size}")

    # ---- the central directory -----------------------------------------------------------------------
    def _directory(self) -> None:
        while self._fill(4) and bytes(self._buf[:4]) == CENTRAL_SIG:
            fields = _CENTRAL.unpack(self._take(_CENTRAL.size))
            flags, nlen, xlen, clen = fields[3], fields[10], fields[11], fields[12]
            attr, offset = fields[15], fields[16]
            name_raw, extra = self._take(nlen), self._take(xlen)
            self._take(clen)
            if offset == U32:
                offset = _zip64_offset(extra, fields[8] == U32, fields[9] == U32)
            self.central[offset] = CentralEntry(name_raw.decode("utf-8" if flags & 0x800 else "cp437"), attr)
        if not self._fill(4) or bytes(self._buf[:4]) not in END_SIGS:
            raise ZipStreamError("the zip's central directory has no end record")


def _extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, i)
        yield tag, extra[i + 4:i + 4 + n]
        i += 4 + n


def _zip64_sizes(extra: bytes) -> tuple[int, int] | None:
    """(uncompressed, compressed) of a local header's zip64 field, when it has one."""
    for tag, body in _extra_fields(extra):
        if tag == 0x0001:
            values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            return (values[0] if values else U32, values[1] if len(values) > 1 else U32)
    return None


def _zip64_offset(extra: bytes, usize_in_extra: bool, csize_in_extra: bool) -> int:
    for tag, body in _extra_fields(extra):
        if tag == 0x0001:
            i = 8 * (usize_in_extra + csize_in_extra)
            if len(body) >= i + 8:
                return int(struct.unpack_from("<Q", body, i)[0])
    raise ZipStreamError("a central directory entry has no zip64 offset")
