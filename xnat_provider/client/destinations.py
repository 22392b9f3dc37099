"""Where downloaded files may land, checked before anything is requested or written.

A catalog names each file by a relative path; a zip names its entries. Either could point outside the folder
asked for (``..``, an absolute path, a drive, a link inside the folder to elsewhere): :func:`check_relpath` and
:class:`Joiner` refuse those. :class:`Destinations` checks that the folders can be written and that no folder sits
where a file must go, so that a download fails with :class:`XnatBadInputError` naming the obstacle, before its
first request, rather than with a raw ``OSError`` half-way through. Targets on object storage are handed to
:mod:`.storage`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import XnatBadInputError


def check_relpath(rel: str, root: object = "the target folder") -> PurePosixPath:
    """A relative path that stays inside its folder: no absolute path, drive, ``..`` or empty name."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or re.match(r"^[A-Za-z]:", rel):
        raise XnatBadInputError(f"Refusing unsafe path {rel!r}: it would be written outside {root}.")
    return pure


class Destinations:
    """Checks that downloads can land where they are asked to, before anything is requested or written:
    :class:`XnatBadInputError` naming the file in the way (a destination that is a file, or under one; a file's
    place taken by a folder) or the folder that cannot be written, instead of a raw ``OSError`` half-way through.
    Folders already found fine are not looked at again."""

    def __init__(self) -> None:
        self._fine: set[Path] = set()

    def folder(self, dest: Path, what: str = "Download destination") -> None:
        """``dest`` is, or can be created as, a folder this process can write in."""
        path = Path(os.path.abspath(dest))
        nearest = next(p for p in (path, *path.parents) if os.path.lexists(p))  # the root always exists
        if nearest in self._fine:
            return
        if not nearest.is_dir():
            kind = ("a broken link" if not nearest.exists() else "a file" if nearest.is_file()
                    else "not a folder (a special file)")
            where = f"is {kind}" if nearest == path else f"is under {nearest}, which is {kind}"
            raise XnatBadInputError(f"{what} {dest} {where}: nothing was downloaded.")
        try:
            with tempfile.TemporaryFile(dir=nearest):
                pass
        except OSError as exc:
            raise XnatBadInputError(f"{what} {dest} cannot be written: no file can be created in {nearest} "
                                    f"({exc.strerror or type(exc).__name__}): nothing was downloaded.") from None
        self._fine.add(nearest)

    def files(self, targets: Iterable[Path]) -> None:
        """Each target's place is free of a folder, and its folder can be made and written in (each folder is
        looked at once, whatever the number of files in it)."""
        folders: dict[Path, set[str]] = {}  # target folder -> names of the folders in it
        for target in targets:
            parent = target.parent
            if parent not in folders:
                self.folder(parent, f"Cannot download {target.name}: its folder")
                folders[parent] = subfolders(parent)
            if target.name in folders[parent]:
                raise XnatBadInputError(f"Cannot download to {target}: a folder is in the way (it would be replaced "
                                        "by a file): nothing was downloaded.")


def subfolders(folder: Path) -> set[str]:
    """Names of the folders (and links to folders) in ``folder``; none if it does not exist yet."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if e.is_dir()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def names_in(folder: Path) -> set[str] | None:
    """Every name in ``folder`` (None when it does not exist)."""
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None


def on_storage(target: object) -> bool:
    """Whether ``target`` is on an fsspec file system (an ``ObjectStoragePath``: ``.fs`` and ``.path``): such
    targets go to :mod:`.storage`."""
    return not isinstance(target, (str, os.PathLike)) and (hasattr(type(target), "fs") or
                                                             "fs" in getattr(target, "__dict__", {}))


def storage_module() -> Any:
    """:mod:`.storage`, imported on the object-storage branch only: it builds on the downloads (an import cycle
    at load time otherwise), and a local download never needs it."""
    from . import storage

    return storage


def check_destination(dest: str | os.PathLike[str]) -> Path:
    """``dest`` as a Path, once checked to be (or to be creatable as) a writable folder; see :class:`Destinations`.
    On object storage, a :class:`~.storage.FsPath` checked by :func:`.storage.check_destination`."""
    if on_storage(dest):
        return storage_module().check_destination(dest)  # type: ignore[return-value]
    Destinations().folder(Path(dest))
    return Path(dest)


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths and anything that would land outside ``root``."""
    return Joiner(root).join(rel)


class Joiner:
    """:func:`safe_join` for many files under one root: the root and each folder are resolved once (links
    followed, so that a link inside ``root`` to elsewhere is refused), not once per file."""

    def __init__(self, root: Path | Any):
        self.root = root
        self._local = isinstance(root, Path)
        self._top = root.resolve() if self._local else None
        self._folders: dict[PurePosixPath, Path] = {}

    def join(self, rel: str) -> Path:
        if not self._local:  # a storage folder, from check_destination
            return storage_module().join_checked(self.root, rel)  # type: ignore[no-any-return]
        pure = check_relpath(rel, self.root)
        folder = self._folders.get(pure.parent)
        if folder is None:
            folder = self._inside((self.root / Path(*pure.parent.parts)).resolve(), rel)
            self._folders[pure.parent] = folder
        target = folder / pure.name
        if os.path.islink(target):  # the name itself a link: where it points must be inside too
            return self._inside(target.resolve(), rel)
        return target

    def _inside(self, path: Path, rel: str) -> Path:
        if path != self._top and self._top not in path.parents:
            raise XnatBadInputError(f"Refusing unsafe path {rel!r}: it would be written outside {self.root}.")
        return path
