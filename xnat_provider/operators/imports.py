"""``XnatImportOperator``: import DICOM into XNAT, safely under task retries."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from airflow.sdk import ObjectStoragePath

from ..client.errors import XnatBadInputError
from ..client.imports import ImportMemory, check_import_args, check_import_flags
from ..client.storage import FsPath, as_target
from .base import XnatBaseOperator, logs_out, renamed_argument
from .transfers import URL, storage_path

STATE_KEY = "xnat_import"  # the task state store's key: the client's ImportMemory, what earlier tries sent


class XnatImportOperator(XnatBaseOperator):
    """Import a zip, a tar, a DICOM file, a directory, or every match of a glob, into ``project``.

    ``destination`` is ``prearchive`` (the prearchive sessions are built at once and READY, ready for
    :class:`XnatArchiveOperator` or a review; XNAT leaves them there even in a project set to auto-archive) or
    ``archive``. Returns one dict per study: project, subject, label, uri, in_prearchive, timestamp and status.

    ``overwrite`` follows XNAT's import service: None refuses an experiment that already exists (unless the
    project auto-archives), ``append`` merges into it with XNAT's checks, ``delete`` merges past them, overwriting
    files of the same name; neither deletes anything already archived. A study that conflicts stays in the
    prearchive in CONFLICT and the task fails with :class:`XnatConflictError` and XNAT's reason.

    ``quarantine`` and ``trigger_pipelines`` are refused (before anything is read or sent): XNAT's import
    service drops them. Import to the prearchive, then archive with
    ``XnatArchiveOperator(quarantine=True, trigger_pipelines=...)``.

    A retry never creates a second copy. The client's
    :meth:`~xnat_provider.client.imports.ImportMixin.import_dicom_retry_safe` records, before sending, the
    studies it is about to send and what the server held for them (in the prearchive and in the archive); the
    operator keeps that record (an :class:`~xnat_provider.client.imports.ImportMemory`) in the task state store,
    which survives a retry on another worker, and hands it back on the next try. A later try looks, study by
    study, for what arrived since (in both places: an archive import that conflicted stays in the prearchive,
    and a prearchive session may have been archived since) and sends only the studies that did not, returning
    refs for all. Inside one try, the client resolves an ambiguous answer (a gateway's 504 after XNAT did the
    work) the same way. Each source's headers are read once, and the project checked once, for the whole run.

    ``source`` may be on object storage (a landing area every worker reaches): an ``ObjectStoragePath`` or a
    URL, a glob allowed (``s3://bucket/landing/*.zip``). Headers are read from the store, and each request body
    is zipped on the fly from the files streamed out of it, with the same checks before anything is sent.

    :param source: a path or glob; every matching file or directory is imported. Or on object storage: an
        ``ObjectStoragePath``, or a URL (a glob allowed) with ``storage_conn_id``.
    :param project: the XNAT project to import into (it must exist).
    :param subject: the subject label to file the data under (default: what XNAT derives from the DICOM
        headers).
    :param experiment: the label of the imaging session (XNAT experiment) the data becomes (default: what XNAT
        derives from the DICOM headers).
    :param session: deprecated name of ``experiment``.
    :param destination: ``prearchive`` (the default) or ``archive``.
    :param overwrite: None, ``append`` or ``delete`` (XNAT's merge modes, as above).
    :param quarantine: must stay False (refused: see above).
    :param trigger_pipelines: must stay None (refused: see above).
    :param ignore_unparsable: skip files that are not DICOM instead of refusing the source.
    :param storage_conn_id: the Airflow connection of a URL ``source``'s file system (``aws_default`` for
        ``s3://``); None uses the file system's default credentials. Ignored for a local path.
    """

    template_fields: Sequence[str] = ("source", "project", "subject", "experiment", "destination", "overwrite",
                                      "storage_conn_id", "xnat_conn_id")

    def __init__(self, *, source: str | os.PathLike[str] | ObjectStoragePath, project: str,
                 subject: str | None = None, experiment: str | None = None, destination: str = "prearchive",
                 overwrite: str | None = None, quarantine: bool = False, trigger_pipelines: bool | None = None,
                 ignore_unparsable: bool = False, storage_conn_id: str | None = None, session: str | None = None,
                 **kwargs: Any) -> None:
        experiment = renamed_argument(self, "experiment", experiment, "session", session)
        super().__init__(**kwargs)
        self.source = source  # may be an XComArg until rendered: converted in execute
        self.storage_conn_id = storage_conn_id
        self.project, self.subject, self.experiment = project, subject, experiment
        self.destination, self.overwrite = destination, overwrite
        self.quarantine, self.trigger_pipelines = quarantine, trigger_pipelines
        self.ignore_unparsable = ignore_unparsable
        check_import_flags(str(destination), quarantine, trigger_pipelines)  # fails when the DAG is parsed

    def sources(self) -> list[Path | FsPath]:
        target = as_target(storage_path(self.source, self.storage_conn_id, "source"), "Import source")
        if isinstance(target, FsPath):  # object storage: one listing for a glob, one look for a path
            found = target.glob() if glob.has_magic(target.path) else [target] if target.info() else []
            if not found:
                raise XnatBadInputError(f"Nothing to import: no file or directory matches {str(target)!r}.")
            return found  # type: ignore[return-value]
        raw = self.source if isinstance(self.source, str) else os.fspath(target)
        source = os.fspath(target) if URL.match(raw) else raw  # a file:// URL is read as its local path
        matches = sorted(glob.glob(source)) if glob.has_magic(source) else [source]
        paths = [Path(m) for m in matches if Path(m).exists()]
        if not paths:
            raise XnatBadInputError(f"Nothing to import: no file or directory matches {source!r}.")
        return paths

    def _check(self) -> None:
        """The rendered arguments, checked before anything is read or sent."""
        if self.overwrite in ("", "None"):  # what a template that means "no overwrite" renders to
            self.overwrite = None
        check_import_args(self.project, self.destination, self.overwrite, self.quarantine, self.trigger_pipelines)

    @logs_out
    def execute(self, context: Any) -> list[dict[str, Any]]:
        self._check()
        sources = self.sources()
        if self.destination == "archive" and self.experiment:
            self.push_experiment_link(context, self.project, self.experiment)
        else:
            self.push_prearchive_link(context, self.project)  # where the prearchive sessions will be
        store = context.get("task_state_store")
        memory = ImportMemory(store.get(STATE_KEY) if store is not None else None,
                              save=partial(store.set, STATE_KEY) if store is not None else None)
        imported = self.hook.get_conn().import_dicom_retry_safe(
            sources, self.project, memory=memory, subject=self.subject, experiment=self.experiment,
            destination=self.destination, overwrite=self.overwrite, quarantine=self.quarantine,
            trigger_pipelines=self.trigger_pipelines, ignore_unparsable=self.ignore_unparsable)
        results = [session.to_dict() for session in imported]
        if results:
            first = results[0]
            if first["in_prearchive"]:
                self.push_prearchive_session_link(context, first["uri"])
            elif first["label"]:
                self.push_experiment_link(context, self.project, first["label"])
        return results
