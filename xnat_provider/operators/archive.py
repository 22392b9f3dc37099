"""``XnatArchiveOperator``: archive sessions from the prearchive, with a conflict policy and asset events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import Asset, AssetAlias

from ..client.errors import XnatBadInputError, XnatConflictError, XnatNotFoundError
from ..client.models import PrearchiveSession
from ..client.protocol import archived_uri, prearchive_uri
from .base import XnatBaseOperator, structured

ARCHIVED_ALIAS = "xnat_archived_sessions"
ON_CONFLICT = ("fail", "append", "skip")
OVERWRITE = (None, "none", "append", "delete")
SELECTION_KEY = "xnat_archive_selection"


def session_asset(host: str, project: str, subject: str, label: str) -> Asset:
    """The Asset an archived session stands for: ``xnat://<host>/<project>/<subject>/<session>``."""
    return Asset(name=f"xnat_{host}_{project}_{subject}_{label}", uri=f"xnat://{host}/{project}/{subject}/{label}")


class XnatArchiveOperator(XnatBaseOperator):
    """Archive prearchive sessions: those given (an upstream XCom such as ``XnatImportOperator``'s or
    ``XnatPrearchiveSensor``'s output, dicts with ``uri`` or project/timestamp/folder), or those selected in
    ``project`` by status (READY), subject, session label or study UID.

    ``on_conflict``: ``fail`` (raise :class:`XnatConflictError`), ``append`` (merge into the existing
    session: unless ``overwrite`` is given, every session is archived with ``overwrite="append"``, which
    archives a new session as usual; a conflict even a merge cannot resolve is raised) or ``skip`` (leave it in
    the prearchive, reported as skipped). ``overwrite`` (``append`` or ``delete``) is sent as given. XNAT's
    archive service merges into an existing session of the same label even without ``overwrite`` (new scans
    are added; the same files again, another StudyInstanceUID... are conflicts); ``append`` merges past those
    checks; ``delete`` is, for one session, the same as ``append``: nothing is deleted or replaced, the old
    scans and files stay beside the new ones (see :meth:`XnatClient.archive
    <xnat_provider.client.prearchive.PrearchiveMixin.archive>`).
    ``quarantine=True`` archives the sessions quarantined (XNAT's experiment status ``quarantine``);
    ``trigger_pipelines`` (True/False) tells XNAT whether to run the project's auto-run pipelines.
    ``new_project``/``new_subject``/``new_label`` relabel the archived session (one session only). Returns one
    dict per session: id, label, project, subject, uri, status (``archived``, ``already_archived`` or
    ``skipped``) and the reason for a skip.

    Emits one asset event per archived session through the asset alias ``asset_alias`` (default
    ``xnat_archived_sessions``): ``xnat://<host>/<project>/<subject>/<session>`` with the XNAT IDs as extra,
    so downstream DAGs can be scheduled on ``AssetAlias("xnat_archived_sessions")``.
    Safe to retry: a session that an earlier try archived is found in the archive and reported again.
    """

    template_fields: Sequence[str] = ("sessions", "project", "subject_filter", "session_filter", "study_uid",
                                      "new_project", "new_subject", "new_label", "overwrite", "on_conflict",
                                      "xnat_conn_id")
    template_fields_renderers = {"sessions": "json"}

    def __init__(self, *, sessions: list[dict[str, Any]] | str | None = None, project: str | None = None,
                 subject_filter: str | None = None, session_filter: str | None = None, study_uid: str | None = None,
                 overwrite: str | None = None, new_project: str | None = None, new_subject: str | None = None,
                 new_label: str | None = None, on_conflict: str = "fail", asset_alias: str = ARCHIVED_ALIAS,
                 quarantine: bool | None = None, trigger_pipelines: bool | None = None, **kwargs: Any) -> None:
        outlets = list(kwargs.pop("outlets", None) or [])
        outlets.append(AssetAlias(asset_alias))
        super().__init__(outlets=outlets, **kwargs)
        if sessions is None and project is None:
            raise XnatBadInputError("Give the sessions to archive, or a project to select READY sessions from.")
        if on_conflict not in ON_CONFLICT and "{{" not in str(on_conflict):  # a template is checked when rendered
            raise XnatBadInputError(f"on_conflict must be one of {ON_CONFLICT}, not {on_conflict!r}")
        self.sessions, self.project = sessions, project
        self.subject_filter, self.session_filter, self.study_uid = subject_filter, session_filter, study_uid
        self.overwrite, self.on_conflict, self.asset_alias = overwrite, on_conflict, asset_alias
        self.new_project, self.new_subject, self.new_label = new_project, new_subject, new_label
        self.quarantine, self.trigger_pipelines = quarantine, trigger_pipelines

    def _targets(self, client: Any) -> list[dict[str, Any]]:
        if self.sessions is not None:
            sessions = structured(self.sessions)
            given = sessions if isinstance(sessions, list) else [sessions]
            out = []
            for s in given:
                if isinstance(s, str):
                    s = {"uri": s}
                uri = s.get("uri") or prearchive_uri(s)
                if not s.get("in_prearchive", True):
                    continue  # already in the archive (an import straight to the archive)
                out.append({**s, "uri": uri if uri.startswith("/data/") else "/data" + uri})
            return out
        found = client.list_prearchive(self.project, status="READY", study_uid=self.study_uid)
        return [{**s.to_dict(), "uri": s.uri} for s in found
                if (self.subject_filter is None or s.subject == self.subject_filter)
                and (self.session_filter is None or s.name == self.session_filter)]

    def execute(self, context: Any) -> list[dict[str, Any]]:
        if self.overwrite in ("", "None"):  # what a template that means "no overwrite" renders to
            self.overwrite = None
        if self.overwrite not in OVERWRITE:
            raise XnatBadInputError(f"overwrite must be one of {OVERWRITE[1:]}, not {self.overwrite!r}")
        if self.on_conflict not in ON_CONFLICT:
            raise XnatBadInputError(f"on_conflict must be one of {ON_CONFLICT}, not {self.on_conflict!r}")
        if self.sessions is None:
            self.push_prearchive_link(context, str(self.project))  # the sessions are selected from it
        client = self.hook.get_conn()
        targets = self._targets(client)
        if self.sessions is None:
            targets = self._remember_selection(context, targets)
        if (self.new_project or self.new_subject or self.new_label) and len(targets) > 1:
            raise XnatBadInputError(f"Relabelling needs exactly one session; {len(targets)} were selected.")
        host = urlsplit(client.base_url).netloc
        results = []
        for t in targets:
            self.push_session_link(context, t.get("project") or "", prearchive_uri=t["uri"])  # on failure too
            results.append(self._archive_one(client, t))
        for r in results:
            if r["status"] in ("archived", "already_archived"):
                context["outlet_events"][AssetAlias(self.asset_alias)].add(
                    session_asset(host, r["project"], r["subject"], r["label"]),
                    extra={"project": r["project"], "subject": r["subject"], "label": r["label"],
                           "experiment_id": r["id"], "subject_id": r["subject_id"], "uri": r["uri"],
                           "xnat_url": client.base_url})
        archived = [r for r in results if r["status"] != "skipped"]
        if archived:
            self.push_session_link(context, archived[0]["project"], archived[0]["label"])
        self.log.info("Archived %d, skipped %d", len(archived), len(results) - len(archived))
        return results

    @staticmethod
    def _remember_selection(context: Any, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A selection is made again on a retry, and the sessions an earlier try archived are no longer READY:
        remember what was selected in the task state store, so a retry reports (and emits events for) them."""
        store = context.get("task_state_store")
        if store is None:
            return targets
        earlier = store.get(SELECTION_KEY) or []
        fresh = {t["uri"] for t in targets}
        merged = [t for t in earlier if t["uri"] not in fresh] + targets
        store.set(SELECTION_KEY, merged)
        return merged

    def _archive_one(self, client: Any, target: dict[str, Any]) -> dict[str, Any]:
        row: PrearchiveSession | None = client.find_prearchive(target["uri"])
        project = self.new_project or (row.project if row else target.get("project"))
        label = self.new_label or (row.name if row else target.get("name") or target.get("label"))
        if row is None:
            exp = client.find_experiment(project, label) if project and label else None
            if exp is None:
                raise XnatNotFoundError(f"{target['uri']} is not in the prearchive, and {project}/{label} is not in "
                                        "the archive: nothing to archive.")
            self.log.info("%s was archived already (an earlier try?)", target["uri"])
            return self._result(exp, "already_archived")
        try:
            ref = client.archive(row, overwrite=self._overwrite(), project=self.new_project,
                                 subject=self.new_subject, label=self.new_label, quarantine=self.quarantine,
                                 trigger_pipelines=self.trigger_pipelines)
        except XnatConflictError as exc:
            if self.on_conflict != "skip":
                raise  # "fail"; or "append", whose merge was asked up front and still conflicts
            self.log.warning("Leaving %s in the prearchive: %s", row.uri, exc)
            return {"id": "", "label": row.name, "project": row.project, "subject": row.subject,
                    "subject_id": "", "uri": row.uri, "status": "skipped", "reason": str(exc)}
        return self._result(client.get_experiment(ref.project, ref.label), "archived")

    def _overwrite(self) -> str | None:
        """The overwrite mode sent: ``overwrite`` when given, else ``append`` for ``on_conflict="append"`` (one
        request merges a conflicting session and archives a new one alike), else none."""
        if self.overwrite not in (None, "none"):
            return self.overwrite
        return "append" if self.on_conflict == "append" else self.overwrite

    @staticmethod
    def _result(exp: Any, status: str) -> dict[str, Any]:
        return {"id": exp.id, "label": exp.label, "project": exp.project, "subject": exp.subject_label,
                "subject_id": exp.subject_id, "uri": archived_uri(exp.project, exp.subject_label, exp.label),
                "status": status}
