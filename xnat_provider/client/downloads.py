"""Downloads that prove they are complete: whole scans, sessions and resources, verified, atomic, resumable.

:class:`DownloadMixin` is the client's download façade. What it is built from, one concern per module:

- :mod:`.file_downloads`: one file at a time from the catalog, to ``<name>.part``, verified (size and MD5), renamed,
  resumed with a Range request after a break, skipped when already there verified (:class:`FileDownloadMixin`);
- :mod:`.hashed_stream`: the bytes themselves, read into recycled buffers and hashed on a helper thread, so a big
  file runs at the rate of MD5 alone (:func:`receive`);
- :mod:`.destinations`: where files may land, checked before the first request;
- :mod:`.zip_extraction` and :mod:`.zip_stream`: zips extracted safely (no absolute paths, no ``..``, no links),
  from disk or as they arrive.

Scans with many small files take a zip fast path (:meth:`DownloadMixin.download_scans`,
:meth:`DownloadMixin.download_session`): when none of a scan resource's files is on disk yet, the resource comes
as one zip, read as it arrives (:mod:`.zip_stream`), and each entry the catalog lists is extracted (to
``<name>.part``, or into a hidden folder renamed into place whole when the folder is new) while the rest is still
in transit; once the zip has ended well, what matches the listing (size and MD5) is renamed. Whatever the zip
did not deliver verified (a missing entry, wrong bytes, a broken transfer) is then fetched file by file, so the
result, and the manifest, are those of the per-file path.

Long transfers log their progress (:mod:`.progress`). The names this module used to define before it was split
are still importable from it (``BROKEN``, ``Body``, ``receive``, ``md5_of``, ``check_relpath``...).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

import requests

from .destinations import (
    Destinations,
    Joiner,
    check_destination,
    check_relpath,
    names_in,
    on_storage,
    safe_join,
    storage_module,
)
from .errors import XnatBadInputError, XnatError, XnatNotFoundError, XnatTransferError
from .file_downloads import FileDownloadMixin, Pair, PartState
from .hashed_stream import (
    BROKEN,
    BUFFER,
    BUFFERS,
    CHUNK,
    THREADED_MD5_MIN,
    Body,
    Hasher,
    fill,
    hash_file,
    md5_of,
    receive,
)
from .models import Experiment, Manifest, Scan
from .progress import NO_PROGRESS, Progress
from .protocol import looks_like_html, q, raise_for_answer
from .transport import chained, redacted_cause
from .zip_extraction import ZipExtraction, extract_zip, is_link
from .zip_stream import ForwardZip, ZipStreamError

__all__ = [  # the façade, and what was importable from here before the split
    "BROKEN", "BUFFER", "BUFFERS", "CHUNK", "THREADED_MD5_MIN", "Body", "DownloadMixin", "FileDownloadMixin",
    "Hasher", "Pair", "PartState", "check_destination", "check_relpath", "fill", "hash_file", "is_link", "md5_of",
    "on_storage", "receive", "safe_join",
]

log = logging.getLogger("xnat_provider.client")


class DownloadMixin(FileDownloadMixin):
    """The downloads of :class:`~xnat_provider.client.XnatClient`: files (from :class:`FileDownloadMixin`), and
    here the calls that download many at once (a scan selection, a session, a zip), with the zip fast path."""

    #: The zip fast path of :meth:`download_scans` and :meth:`download_session` is taken for a scan resource of
    #: at least ``ZIP_MIN_FILES`` files whose mean size is below ``ZIP_MAX_MEAN_SIZE`` bytes, when none of its
    #: files (nor a ``.part`` of one) is on disk yet; ``ZIP_FAST_PATH = False`` turns it off.
    ZIP_FAST_PATH: bool = True
    ZIP_MIN_FILES: int = 20
    ZIP_MAX_MEAN_SIZE: int = 2 * CHUNK

    def select_scans(self, project: str, experiment: str | Experiment, scans: str | Iterable[str],
                     experiment_path: str | None = None) -> list[Scan]:
        """Scans chosen by ``ALL``, a list of IDs or types, or a regular expression (``re:T1.*``) on the type.

        ``experiment_path`` (from :meth:`experiment_path`) saves looking the experiment up again."""
        exp_path = experiment_path or self.experiment_path(project, experiment)  # type: ignore[attr-defined]
        available = self.scans_at(exp_path)  # type: ignore[attr-defined]
        if scans == "ALL":
            return available  # type: ignore[no-any-return]
        if isinstance(scans, str) and scans.startswith("re:"):
            rx = re.compile(scans[3:])
            chosen = [s for s in available if rx.fullmatch(s.type or "") or rx.fullmatch(s.series_description or "")]
        else:
            wanted = [scans] if isinstance(scans, str) else list(scans)
            chosen = [s for s in available if s.id in wanted or s.type in wanted]
            missing = [w for w in wanted if not any(w in (s.id, s.type) for s in available)]
            if missing:
                label = experiment.label if isinstance(experiment, Experiment) else experiment
                raise XnatNotFoundError(f"No scan {missing} in {project}/{label}; it has "
                                        f"{[(s.id, s.type) for s in available]}")
        return chosen

    def download_scans(self, project: str, experiment: str | Experiment, dest: str | os.PathLike[str],
                       scans: str | Iterable[str] = "ALL", resource: str = "DICOM", *, subject: str | None = None,
                       workers: int | None = None) -> Manifest:
        """Scans' resource files into ``dest/<scan id>/<resource>/...``, verified and resumable.

        ``experiment`` is a label or ID within ``project`` (or an :class:`Experiment`); ``subject``, when known,
        saves the lookup of the experiment's ID (see :meth:`experiment_path`). A scan resource of many small files
        none of which is on disk yet comes as one zip (see :meth:`_download_pairs`); everything else, and
        whatever the zip did not deliver verified, file by file.
        """
        dest = check_destination(dest)
        exp_path = self.experiment_path(project, experiment, subject)  # type: ignore[attr-defined]
        pairs: list[Pair] = []
        zips: list[tuple[str, list[int]]] = []
        joiner = Joiner(dest)
        for scan in self.select_scans(project, experiment, scans, exp_path):
            path = f"{exp_path}/scans/{q(scan.id)}/resources/{q(resource)}"
            try:
                files = self.list_files(path)
            except XnatError as exc:
                if exc.status == 404:
                    continue  # this scan has no such resource
                raise
            zips.append((path, list(range(len(pairs), len(pairs) + len(files)))))
            pairs += [(f, joiner.join(f"{scan.id}/{resource}/{f.path}")) for f in files]
        return self._download_pairs(pairs, zips, workers, dest)

    def download_session(self, project: str, experiment: str | Experiment, dest: str | os.PathLike[str],
                         assessors: bool = True, *, subject: str | None = None,
                         workers: int | None = None) -> Manifest:
        """Every file of a session, verified and resumable: ``dest/scans/<scan id>/<resource>/``,
        ``dest/resources/<resource>/`` (the session's own resources) and ``dest/assessors/<label>/<resource>/``.

        Scan resources may come as one zip each, as in :meth:`download_scans`; the rest goes file by file."""
        dest = check_destination(dest)
        exp = self.experiment_path(project, experiment, subject)  # type: ignore[attr-defined]
        pairs: list[Pair] = []
        zips: list[tuple[str, list[int]]] = []
        joiner = Joiner(dest)

        def add(path: str, prefix: str) -> None:
            pairs.extend((f, joiner.join(f"{prefix}/{f.resource}/{f.path}")) for f in self.list_files(path))

        for scan in self.scans_at(exp):  # type: ignore[attr-defined]
            first = len(pairs)
            add(f"{exp}/scans/{q(scan.id)}", f"scans/{scan.id}")
            by_resource: dict[str, list[int]] = {}
            for i in range(first, len(pairs)):
                by_resource.setdefault(pairs[i][0].resource, []).append(i)
            zips += [(f"{exp}/scans/{q(scan.id)}/resources/{q(label)}", indices)
                     for label, indices in by_resource.items() if label]
        add(exp, "resources")
        if assessors:
            for row in self._rows(f"{exp}/assessors"):  # type: ignore[attr-defined]
                add(f"{exp}/assessors/{q(row['ID'])}", f"assessors/{row.get('label') or row['ID']}")
        return self._download_pairs(pairs, zips, workers, dest)

    # ---- the zip fast path -------------------------------------------------------------------------
    def _download_pairs(self, pairs: list[Pair], zips: list[tuple[str, list[int]]],
                        workers: int | None, dest: Any = None) -> Manifest:
        """Download (remote, local path) pairs; each group in ``zips`` (a resource path, indices into ``pairs``)
        may come as one zip.

        Each eligible group (:meth:`_zip_eligible`) is fetched as ``GET {path}/files?format=zip`` and extracted
        as it arrives by :meth:`_zip_fast_path`, which keeps only entries whose size and MD5 match the listing.
        Every pair it did not deliver goes through the per-file path (skip, resume, retry, verify), so the
        manifest, in the order of ``pairs``, is the one the per-file path gives. Pairs on object storage go file
        by file (a zip is read from its end: it would need a whole local copy).
        """
        if any(on_storage(t) for _, t in pairs):
            return storage_module().download_to_storage(self, pairs, workers, probe=False)  # type: ignore[no-any-return]
        Destinations().files(t for _, t in pairs)  # before the first request for a file
        if not pairs:
            return Manifest()
        progress = self._progress(f"Download to {dest if dest is not None else self._where([t for _, t in pairs])}",
                                  pairs)
        chosen = [(path, idx) for path, idx in zips if self._zip_eligible([pairs[i] for i in idx])]
        from_zip: dict[int, dict] = {}  # index into pairs -> manifest entry
        if chosen:
            limit = max(1, min(len(chosen), workers or self.transport.config.workers))
            if limit == 1:
                results = [self._zip_fast_path(path, [pairs[i] for i in idx], progress) for path, idx in chosen]
            else:
                with ThreadPoolExecutor(max_workers=limit) as pool:
                    results = list(pool.map(lambda z: self._zip_fast_path(z[0], [pairs[i] for i in z[1]], progress),
                                            chosen))
            for (_, idx), got in zip(chosen, results, strict=True):
                from_zip.update((i, entry) for i, entry in zip(idx, got, strict=True) if entry is not None)
        rest = [p for i, p in enumerate(pairs) if i not in from_zip]
        per_file = iter(self._download_each(rest, workers, progress).files if rest else [])
        manifest = Manifest()
        for i in range(len(pairs)):
            manifest.add(**(from_zip[i] if i in from_zip else next(per_file)))
        progress.finish()
        return manifest

    def _zip_eligible(self, pairs: list[Pair]) -> bool:
        """Many small files, each verifiable (size and digest listed), none on disk yet (nor a ``.part``).

        A rerun or a resumed download keeps the per-file path: it skips verified files and resumes parts."""
        if not self.ZIP_FAST_PATH or not pairs or len(pairs) < self.ZIP_MIN_FILES:
            return False
        if any(f.size is None or not f.digest for f, _ in pairs) or len({t for _, t in pairs}) != len(pairs):
            return False
        if sum(f.size or 0 for f, _ in pairs) / len(pairs) >= self.ZIP_MAX_MEAN_SIZE:
            return False
        names: dict[Path, set[str] | None] = {}  # one listing per folder, not two lookups per file
        for _, t in pairs:
            if t.parent not in names:
                names[t.parent] = names_in(t.parent)
            there = names[t.parent]
            if there and (t.name in there or t.name + ".part" in there):
                return False
        return True

    def _zip_fast_path(self, path: str, pairs: list[Pair], progress: Progress = NO_PROGRESS) -> list[dict | None]:
        """``GET {path}/files?format=zip``, extracted as it arrives (:class:`~.zip_stream.ForwardZip`).

        Returns one manifest entry per pair, or None for a pair the zip did not deliver verified (that file is
        then fetched on its own). Each listed entry is written to ``<name>.part`` and checked against the listing
        while the rest of the zip is in transit; the parts are renamed only once the zip has ended well and its
        central directory agrees (no entry a link). Never raises for a transfer problem: a failed, broken or
        unreadable zip leaves every file to the per-file path, and no part behind.
        """
        out: list[dict | None] = [None] * len(pairs)
        url = f"{path}/files"
        shown = self.transport.redact(url)
        labels = {f.resource for f, _ in pairs if f.resource} | {unquote(path.rstrip("/").rsplit("/", 1)[-1])}
        zipped = ZipExtraction(pairs, [f"/resources/{label}/files/" for label in labels], progress)
        try:
            resp = self.transport.request("GET", url, params={"format": "zip"}, stream=True)
            with resp:
                head = self._zip_head(resp, url)
                zipped.run(ForwardZip(Body(resp, head).read))
        except (XnatError, *BROKEN) as exc:
            reason = self.transport.redact(str(exc))[:300] if isinstance(exc, XnatError) else \
                f"transfer broke: {type(exc).__name__}"
            log.warning("Zip download of %s failed (%s); downloading its %d files one by one", shown, reason,
                        len(pairs))
            zipped.drop()
            return out
        except ZipStreamError as exc:
            log.warning("The zip of %s is damaged (%s); downloading its %d files one by one", shown, exc, len(pairs))
            zipped.drop()
            return out
        except BaseException:
            zipped.drop()
            raise
        zipped.commit(out)
        zipped.report(shown)
        return out

    def _zip_head(self, resp: requests.Response, path: str) -> bytes:
        """The first bytes of a zip answered as ``text/html`` (a gateway may label it so), looked at for an error
        page: raises its typed error when it is one, else returns them (they belong to the zip)."""
        if "text/html" not in resp.headers.get("Content-Type", ""):
            return b""
        head = resp.raw.read(64 * 1024, decode_content=True)
        text = head.decode("utf-8", "replace")
        if looks_like_html(text):
            raise_for_answer("GET", path, resp.status_code, text, self.transport.redact)
        return bytes(head)

    # ---- zips --------------------------------------------------------------------------------------
    def download_zip(self, path: str, dest: str | os.PathLike[str], extract: bool = True) -> Manifest:
        """``GET {path}?format=zip`` to a temporary file, then (optionally) extract it safely into a local ``dest``
        (to object storage, use :meth:`download_resource` or :meth:`download_session`)."""
        dest = check_destination(dest)
        if not isinstance(dest, Path):
            raise XnatBadInputError(f"download_zip needs a local folder, not {dest}: nothing was downloaded.")
        dest.mkdir(parents=True, exist_ok=True)
        part = dest / ".download.zip.part"
        named = self._stream_zip(path, part)
        if not extract:
            name = named.group(1).strip() if named else ""
            final = dest / (name if name not in ("", ".", "..") else f"{PurePosixPath(path).name}.zip")
            os.replace(part, final)
            manifest = Manifest()
            manifest.add(str(final), final.stat().st_size, md5_of(final), False)
            return manifest
        try:
            return self.extract_zip(part, dest)
        finally:
            part.unlink(missing_ok=True)

    def _stream_zip(self, path: str, part: Path) -> re.Match[str] | None:
        """Stream ``GET {path}?format=zip`` into ``part``; returns the Content-Disposition file name match.

        An HTML error page answered with 200 raises its typed error; a broken transfer removes ``part`` and
        raises :class:`XnatTransferError`."""
        resp = self.transport.request("GET", path, params={"format": "zip"}, stream=True)
        head = b""
        broke: XnatError | None = None
        try:
            if "text/html" in resp.headers.get("Content-Type", ""):  # perhaps an error page answered with 200
                head = resp.raw.read(64 * 1024, decode_content=True)
                text = head.decode("utf-8", "replace")
                if looks_like_html(text):
                    resp.close()
                    raise_for_answer("GET", path, resp.status_code, text, self.transport.redact)
            with resp, open(part, "wb") as out:
                out.write(head)  # bytes already read to look for an error page belong to the zip
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
        except BROKEN as exc:
            resp.close()
            part.unlink(missing_ok=True)
            where = self.transport.redact(path)
            broke = chained(XnatTransferError(f"GET {where}?format=zip: transfer broke ({type(exc).__name__})",
                                              method="GET", path=where), redacted_cause(exc, self.transport.redact))
        if broke is not None:
            raise broke  # outside the except block: the library's exception is not its context
        return re.search(r'filename="?([^";/\\]+)"?', resp.headers.get("Content-Disposition", ""))

    @staticmethod
    def extract_zip(archive: Path, dest: Path) -> Manifest:
        """A zip on disk extracted safely into ``dest`` (see :func:`~.zip_extraction.extract_zip`)."""
        return extract_zip(archive, dest)
