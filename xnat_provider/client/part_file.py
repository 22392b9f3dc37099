"""The ``.part`` file a download writes: whole buffers appended, a big file written around the page cache.

Why around the page cache: writing a GiB through it costs the kernel a copy of every byte into cache pages, paid by
the thread that receives, on top of the socket's copy; measured on this project's 2-vCPU machine that is 0.2-1.8 s
of system time per GiB (the spread is the hypervisor's, which reclaims free guest memory), the same order as MD5's
1.4 s, so a verified download could not run at MD5's rate beside it. Written with ``O_DIRECT`` the device reads the
receive buffer itself: 0.1 s of CPU per GiB (``benchmarks/BENCHMARKS.md``, "direct writes"). It also keeps a
multi-GiB download from evicting what the machine had cached. Small files (below :data:`DIRECT_MIN`) stay in the
page cache, where the task that reads them next will find them.

Direct I/O wants the buffer, the file offset and the length aligned to the device's block: the buffers come from
:func:`aligned_buffer` (page-aligned), the receive loop writes whole buffers, and whatever does not fit (the last,
short buffer; a part resumed at an odd length) is written through the page cache on the same descriptor. Only a
local file system on a block device is written directly (:func:`direct_capable`: ext4, XFS, Btrfs... and overlay,
Docker's): on NFS, SMB or FUSE each direct write would wait for the server. A file system that refuses
``O_DIRECT`` (at open, or on a write) is written through the page cache, as is every file where ``os.O_DIRECT``
does not exist (not Linux).
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

#: Files at least this big are written with ``O_DIRECT`` where the file system takes it.
DIRECT_MIN = 32 << 20
#: The alignment asked of every direct write: a page, which covers 512-byte and 4 KiB block devices.
ALIGN = mmap.PAGESIZE
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: File systems written directly: local, on a block device (``/proc/self/mountinfo``'s type field).
DIRECT_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "bcachefs", "overlay"})
_fs_types: dict[int, str] = {}


def aligned_buffer(size: int) -> mmap.mmap:
    """A zeroed, page-aligned buffer of ``size`` bytes (anonymous memory), usable for direct writes.

    A shared mapping (``mmap``'s default), not a private one: the kernel pins the buffer's pages for every direct
    write, and private pages cost it more to pin (measured side by side, 3 rounds twice each: 0.94-0.95 of MD5
    with shared buffers, 0.91-0.92 with private ones, system time 0.52-0.65 s against 0.60-0.75 s per GiB). The
    pool is 4 MiB; a fork during a download shares it with the child, which never touches it."""
    return mmap.mmap(-1, size)


def file_system_type(folder: Path) -> str:
    """The type of the file system holding ``folder`` (``ext4``, ``nfs4``, ``fuse.sshfs``...), from
    ``/proc/self/mountinfo`` by device number; '' where that cannot be read (not Linux)."""
    try:
        dev = os.stat(folder).st_dev
    except OSError:
        return ""
    if dev not in _fs_types:
        wanted = f"{os.major(dev)}:{os.minor(dev)}"
        found = ""
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    head, sep, tail = line.partition(" - ")
                    fields = head.split()
                    if sep and len(fields) > 2 and fields[2] == wanted:
                        found = tail.split(" ", 1)[0]
                        break
        except OSError:
            pass
        _fs_types[dev] = found
    return _fs_types[dev]


def direct_capable(folder: Path) -> bool:
    """Whether files in ``folder`` are worth writing with ``O_DIRECT``: Linux, on a local block file system."""
    return bool(O_DIRECT) and file_system_type(folder) in DIRECT_FILE_SYSTEMS


class PartFile:
    """A ``.part`` opened to append (``have`` bytes kept) or from empty, written with ``O_DIRECT`` when ``direct``
    and the file system allows it; see the module's docstring. Use as a context manager."""

    def __init__(self, path: Path, have: int, direct: bool):
        self.path = path
        flags = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
                 | (0 if have else os.O_TRUNC))
        self.direct = bool(direct and O_DIRECT and have % ALIGN == 0 and direct_capable(path.parent))
        self._fd = -1
        if self.direct:
            try:
                self._fd = os.open(path, flags | O_DIRECT, 0o666)  # 0o666: the umask decides, as open() does
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this file system does not do direct I/O
                    raise
                self.direct = False
        if self._fd < 0:
            self._fd = os.open(path, flags, 0o666)
        try:
            os.lseek(self._fd, have, os.SEEK_SET)
            if have:
                os.ftruncate(self._fd, have)  # a part longer than what is known good: the rest is dropped
        except BaseException:
            self.close()
            raise
        self.offset = have

    def write(self, view: memoryview) -> None:
        """All of ``view``, at the end of what was written."""
        if self.direct and len(view) % ALIGN:
            self._buffered()  # the short last buffer: through the page cache
        while view:
            try:
                n = os.write(self._fd, view)
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self._buffered()  # the file system takes O_DIRECT at open but not this write
                continue
            if n <= 0:  # a regular file does not do this; never spin on it
                raise OSError(errno.EIO, f"writing {self.path} wrote nothing")
            self.offset += n
            view = view[n:]
            if self.direct and n % ALIGN:
                self._buffered()

    def _buffered(self) -> None:
        import fcntl  # only where O_DIRECT exists (Linux): fcntl is not on every platform

        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~O_DIRECT)
        self.direct = False

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
