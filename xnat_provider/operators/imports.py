"""``XnatImportOperator``: import DICOM into XNAT, safely under task retries."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..client.errors import XnatBadInputError
from ..client.imports import plan_import
from ..client.models import SessionRef
from ..client.protocol import check_label
from .base import XnatBaseOperator

STATE_KEY = "xnat_import"


def _jsonable(value: Any) -> Any:
    """``value`` as it comes back from the task state store (tuples become lists)."""
    return json.loads(json.dumps(value))


class XnatImportOperator(XnatBaseOperator):
    """Import a zip, a tar, a DICOM file, a directory, or every match of a glob, into ``project``.

    ``destination`` is ``prearchive`` (the sessions are built at once and READY, ready for
    :class:`XnatArchiveOperator` or a review) or ``archive``. Returns one dict per study: project, subject,
    label, uri, in_prearchive, timestamp and status.

    A retry never creates a second copy. Before sending, the operator records in the task state store (which
    survives a retry on another worker) the studies it is about to send; a later try looks those studies up
    on the server first and sends only what is not there. Inside one try, the client itself resolves an
    ambiguous answer (a gateway's 504 after XNAT did the work) the same way.

    :param source: a path or glob; every matching file or directory is imported.
    :param overwrite: None, ``append`` or ``delete`` (XNAT's merge modes).
    """

    template_fields: Sequence[str] = ("source", "project", "subject", "session", "destination", "overwrite",
                                      "xnat_conn_id")

    def __init__(self, *, source: str | os.PathLike[str], project: str, subject: str | None = None,
                 session: str | None = None, destination: str = "prearchive", overwrite: str | None = None,
                 quarantine: bool = False, trigger_pipelines: bool | None = None, ignore_unparsable: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source  # may be an XComArg until rendered: converted in execute
        self.project, self.subject, self.session = project, subject, session
        self.destination, self.overwrite = destination, overwrite
        self.quarantine, self.trigger_pipelines = quarantine, trigger_pipelines
        self.ignore_unparsable = ignore_unparsable

    def sources(self) -> list[Path]:
        source = os.fspath(self.source)
        matches = sorted(glob.glob(source)) if glob.has_magic(source) else [source]
        paths = [Path(m) for m in matches if Path(m).exists()]
        if not paths:
            raise XnatBadInputError(f"Nothing to import: no file or directory matches {source!r}.")
        return paths

    def execute(self, context: Any) -> list[dict[str, Any]]:
        if self.destination not in ("prearchive", "archive"):
            raise XnatBadInputError(f"destination must be 'prearchive' or 'archive', not {self.destination!r}")
        if self.overwrite in ("", "None"):  # what a template that means "no overwrite" renders to
            self.overwrite = None
        if self.overwrite not in (None, "append", "delete"):
            raise XnatBadInputError(f"overwrite must be None, 'append' or 'delete', not {self.overwrite!r}")
        check_label(self.project, "project")
        # Every source is read and checked before anything is sent: bad input fails with nothing half-imported.
        plans = [(src, plan_import(src, subject=self.subject, session=self.session,
                                   ignore_unparsable=self.ignore_unparsable)) for src in self.sources()]
        client = self.hook.get_conn()
        if not client.project_exists(self.project):
            raise XnatBadInputError(f"Project {self.project!r} does not exist on {client.session.base_url}.")
        store = context.get("task_state_store")
        state: dict[str, Any] = (store.get(STATE_KEY) if store is not None else None) or {}
        results: list[dict[str, Any]] = []
        for src, plan in plans:
            key = str(src.resolve())
            earlier = state.get(key)
            refs = self._already_there(client, plan, earlier) if earlier else None
            if refs is not None:
                self.log.info("%s was imported by an earlier try; not sending it again", src)
            else:
                state[key] = {"studies": plan.studies, "labels": {u: list(v) for u, v in plan.labels.items()},
                              "before": self._existing(client, plan)}
                state[key]["prints"] = self._fingerprints(client, plan, state[key]["before"])
                if store is not None:
                    store.set(STATE_KEY, state)
                refs = client.import_dicom(
                    src, self.project, subject=self.subject, session=self.session, destination=self.destination,
                    overwrite=self.overwrite, quarantine=self.quarantine, trigger_pipelines=self.trigger_pipelines,
                    ignore_unparsable=self.ignore_unparsable)
                self.log.info("Imported %s: %s", src, ", ".join(r.uri for r in refs))
            results += [{**self._describe(client, r), "source": str(src)} for r in refs]
        if results:
            first = results[0]
            self.push_session_link(context, self.project, None if first["in_prearchive"] else first["label"],
                                   first["uri"] if first["in_prearchive"] else None)
        return results

    def _existing(self, client: Any, plan: Any) -> list[str]:
        """What already exists for these studies, so that a later try finds only what this one created."""
        if self.destination == "prearchive":
            return [s.uri for s in client.list_prearchive(self.project) if s.study_uid in plan.labels]
        return [e.label for e in client.list_experiments(self.project)]

    def _fingerprints(self, client: Any, plan: Any, before: list[str]) -> dict[str, Any]:
        """For an archive import into sessions that already exist (a merge), what they hold now: a later try
        can then tell whether this try's merge arrived."""
        if self.destination != "archive":
            return {}
        return {label: _jsonable(client.session_fingerprint(self.project, label))
                for _subject, label in plan.labels.values() if label in before}

    def _already_there(self, client: Any, plan: Any, earlier: dict[str, Any]) -> list[SessionRef] | None:
        """Refs of what an earlier try of this task created for every study, or None if anything is missing."""
        before = set(earlier.get("before", []))
        refs: list[SessionRef] = []
        for uid in plan.studies:
            label = plan.labels[uid][1]
            if self.destination == "prearchive":
                rows = [s for s in client.list_prearchive(self.project, study_uid=uid) if s.uri not in before]
                if not rows:
                    return None
                refs += [SessionRef(uri=s.uri, project=s.project, subject=s.subject, label=s.name,
                                    timestamp=s.timestamp, in_prearchive=True) for s in rows]
            else:
                exp = client.find_experiment(self.project, label)
                if exp is None or (label in before and self.overwrite is None):
                    return None
                if label in before and _jsonable(client.session_fingerprint(self.project, label)) == (
                        earlier.get("prints") or {}).get(label):
                    return None  # it was there before and has not changed: the earlier try's merge never arrived
                refs.append(SessionRef(uri=f"/data/archive/projects/{self.project}/subjects/{exp.subject_label}/"
                                           f"experiments/{exp.label}", project=self.project,
                                       subject=exp.subject_label, label=exp.label))
        return refs

    @staticmethod
    def _describe(client: Any, ref: SessionRef) -> dict[str, Any]:
        out = ref.to_dict()
        if ref.in_prearchive:
            row = client.find_prearchive(ref.uri)
            out.update(status=row.status if row else "GONE", subject=row.subject if row else ref.subject,
                       study_uid=row.study_uid if row else "")
        else:
            out["status"] = "ARCHIVED"
        return out
