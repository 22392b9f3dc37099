"""Zips in the forms the import tests need: written by Python's ``zipfile``, then patched where it cannot go.

A zip written to a sink that cannot seek (what an HTTP body generator is) has a data descriptor after every
entry's data; one written to a file or ``BytesIO`` has its sizes and CRC in the local header instead. XNAT's
reader tells the two apart, so the tests build both.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass


class Unseekable:
    """A write-only sink without ``tell``/``seek``: zipfile then streams, with a data descriptor per entry."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)

    def flush(self) -> None:
        pass


def _write(target: object, entries: list[tuple[str, bytes]], method: int, level: int | None,
           force_zip64: bool) -> None:
    with zipfile.ZipFile(target, "w", method, compresslevel=level) as zf:  # type: ignore[arg-type]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = method
            info._compresslevel = level  # type: ignore[attr-defined]  # a ZipInfo ignores the ZipFile's level
            with zf.open(info, "w", force_zip64=force_zip64) as dst:
                dst.write(data)


def streamed_zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED, level: int | None = None,
                 force_zip64: bool = False) -> bytes:
    """A zip written to an unseekable sink. With the default STORED method this is what the client's
    ``zip_stream`` sent before it deflated: flag bit 3, CRC and sizes 0 in every local header."""
    sink = Unseekable()
    _write(sink, entries, method, level, force_zip64)
    return bytes(sink.data)


def seekable_zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED, level: int | None = None,
                 force_zip64: bool = False) -> bytes:
    """A zip written to memory that can seek back: no data descriptors, sizes and CRC in the local headers."""
    buf = io.BytesIO()
    _write(buf, entries, method, level, force_zip64)
    return buf.getvalue()


@dataclass
class Local:
    """Where an entry sits in a zip: its local header, its data, and what follows the data."""

    name: str
    header: int  # offset of PK\x03\x04
    data: int  # offset of the first data byte
    end: int  # offset just after the data (a data descriptor, if any, starts here)
    method: int
    flag: int


def locals_of(body: bytes) -> list[Local]:
    """The entries' positions, found through the central directory (which Java never reads, so a test may then
    change the local headers or data without keeping the directory right)."""
    out = []
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        for info in zf.infolist():
            start = info.header_offset
            name_len = int.from_bytes(body[start + 26:start + 28], "little")
            extra_len = int.from_bytes(body[start + 28:start + 30], "little")
            data = start + 30 + name_len + extra_len
            out.append(Local(info.filename, start, data, data + info.compress_size, info.compress_type,
                             info.flag_bits))
    return out


def patched(body: bytes, offset: int, data: bytes) -> bytes:
    """``body`` with ``data`` written over it at ``offset``."""
    return body[:offset] + data + body[offset + len(data):]
