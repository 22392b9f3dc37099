"""Object storage for the tests: an S3-like fsspec file system on a local folder, and Airflow stores to use it.

``BlobFileSystem`` (protocol ``blob``) behaves as an object store does where it matters to transfers: an object
is written whole, in blocks of ``block_size`` (S3's multipart upload), and becomes visible only when its
writer closes; there is no append (``open(..., "ab")`` is refused) and no rename (``mv`` copies then deletes);
folders are only key prefixes (none is left once its last object is gone); reads are by byte range. It records
every ``mv`` and the largest block it ever held, so tests can see what the client did. Objects live on disk,
so a test can send hundreds of MiB without holding them in memory.

``memory`` is fsspec's ``MemoryFileSystem`` (which can append): each test gets its own store.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import pytest
import upath.registry
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem


class BlobFileSystem(AbstractFileSystem):
    protocol = "blob"
    root_marker = ""
    cachable = False

    def __init__(self, root: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads = Path(f"{self.root}.uploads")
        self.uploads.mkdir(exist_ok=True)
        self.moves: list[tuple[str, str]] = []
        self.opened_for_write: list[str] = []
        self.largest_block = 0

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = str(path)
        path = path[len("blob://"):] if path.startswith("blob://") else path
        return path.strip("/")

    def local(self, path: str) -> Path:
        return self.root / self._strip_protocol(path)

    def _info_of(self, path: str, local: Path) -> dict[str, Any]:
        if local.is_dir():
            return {"name": path, "size": 0, "type": "directory"}
        st = local.stat()
        return {"name": path, "size": st.st_size, "type": "file", "mtime": st.st_mtime}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        local = self.local(path)
        if not path:
            return {"name": "", "size": 0, "type": "directory"}
        if not local.exists():
            raise FileNotFoundError(path)
        return self._info_of(path, local)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        local = self.local(path)
        if local.is_file():
            out = [self.info(path)]
        elif local.is_dir():
            out = [self._info_of(f"{path}/{p.name}" if path else p.name, p) for p in sorted(local.iterdir())]
        else:
            raise FileNotFoundError(path)
        return out if detail else [i["name"] for i in out]

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.local(path).stat().st_mtime, tz=UTC)

    def created(self, path: str) -> datetime:
        return self.modified(path)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        pass  # no folders on an object store

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        pass

    def rmdir(self, path: str) -> None:
        pass

    def _prune(self, local: Path) -> None:
        """Remove the folders a removed object leaves empty: a prefix with no object is no folder."""
        parent = local.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def rm_file(self, path: str) -> None:
        local = self.local(path)
        if not local.is_file():
            raise FileNotFoundError(path)
        local.unlink()
        self._prune(local)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        paths = path if isinstance(path, list) else [path]
        for p in paths:
            local = self.local(p)
            if local.is_dir():
                if not recursive:
                    raise IsADirectoryError(p)
                for f in self.find(p):
                    self.rm_file(f)
            else:
                self.rm_file(p)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self.local(path1), self.local(path2)
        if not src.is_file():
            raise FileNotFoundError(path1)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.uploads / uuid.uuid4().hex
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        self.moves.append((self._strip_protocol(path1), self._strip_protocol(path2)))
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> Any:
        if mode not in ("rb", "wb"):
            raise NotImplementedError(f"mode {mode!r}: an object store writes objects whole, it cannot append")
        if mode == "wb":
            self.opened_for_write.append(self._strip_protocol(path))
        return BlobFile(self, path, mode, block_size="default" if block_size is None else block_size,
                        autocommit=autocommit, cache_options=cache_options, **kwargs)


class BlobFile(AbstractBufferedFile):
    fs: BlobFileSystem

    def _fetch_range(self, start: int, end: int) -> bytes:
        with open(self.fs.local(self.path), "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def _initiate_upload(self) -> None:
        self._tmp = self.fs.uploads / uuid.uuid4().hex
        self._tmp.write_bytes(b"")

    def _upload_chunk(self, final: bool = False) -> bool:
        data = self.buffer.getvalue()
        self.fs.largest_block = max(self.fs.largest_block, len(data))
        with open(self._tmp, "ab") as f:
            f.write(data)
        if final:
            target = self.fs.local(self.path)
            if target.is_dir():
                raise IsADirectoryError(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, target)  # visible only now, whole
        return True

    def discard(self) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.unlink(missing_ok=True)


# ---- attaching stores to Airflow -----------------------------------------------------------------------------
def attach_store(protocol: str, fs: AbstractFileSystem, conn_id: str | None = None) -> None:
    """Make ``ObjectStoragePath("<protocol>://...")`` (with ``conn_id``) use ``fs``, as a provider's file system
    would. Airflow caches stores by alias (``protocol`` or ``protocol-conn_id``): this replaces the cached one."""
    from airflow.sdk.io.store import _STORE_CACHE, attach

    alias = f"{protocol}-{conn_id}" if conn_id else protocol
    _STORE_CACHE.pop(alias, None)
    attach(protocol=protocol, conn_id=conn_id, fs=fs, alias=alias)


def detach_store(protocol: str, conn_id: str | None = None) -> None:
    from airflow.sdk.io.store import _STORE_CACHE

    _STORE_CACHE.pop(f"{protocol}-{conn_id}" if conn_id else protocol, None)


@pytest.fixture
def memory_fs() -> Iterator[MemoryFileSystem]:
    """A fresh in-memory store for ``memory://`` (its own files: not fsspec's shared global store)."""
    fs = MemoryFileSystem(global_store=False, skip_instance_cache=True)
    attach_store("memory", fs)
    yield fs
    detach_store("memory")


@pytest.fixture
def blob_fs(tmp_path: Path) -> Iterator[BlobFileSystem]:
    """An S3-like store for ``blob://`` (see :class:`BlobFileSystem`), on a folder of the test."""
    fs = BlobFileSystem(tmp_path / "blobstore")
    attach_store("blob", fs)
    yield fs
    detach_store("blob")


# So that fsspec and universal-pathlib (ObjectStoragePath) accept blob:// URLs, as bucket-style paths.
fsspec.register_implementation("blob", BlobFileSystem, clobber=True)
upath.registry.register_implementation("blob", "upath.implementations.cloud.CloudPath", clobber=True)
