"""``XnatArchiveOperator``: archive prearchive sessions, with a conflict policy and asset events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit
from warnings import warn  # not "import warnings": Airflow rewrites that global in operator modules

from airflow.sdk import Asset, AssetAlias

from ..client.errors import XnatBadInputError, XnatConflictError, XnatNotFoundError
from ..client.models import PrearchiveSession
from ..client.protocol import archived_uri, prearchive_uri
from .base import XnatBaseOperator, logs_out, renamed_argument, structured

ARCHIVED_ALIAS = "xnat_archived_sessions"
ON_CONFLICT = ("fail", "append", "skip")
OVERWRITE = (None, "none", "append", "delete")
SELECTION_KEY = "xnat_archive_selection"


def experiment_asset(host: str, project: str, subject: str, label: str) -> Asset:
    """The Asset an archived imaging session (XNAT experiment) stands for:
    ``xnat://<host>/<project>/<subject>/<experiment label>``."""
    return Asset(name=f"xnat_{host}_{project}_{subject}_{label}", uri=f"xnat://{host}/{project}/{subject}/{label}")


def __getattr__(name: str) -> Any:
    """``session_asset``, the old name of :func:`experiment_asset`, with a ``DeprecationWarning``."""
    if name == "session_asset":
        warn("xnat_provider.operators.archive.session_asset is deprecated: use experiment_asset",
                      DeprecationWarning, stacklevel=2)
        return experiment_asset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class XnatArchiveOperator(XnatBaseOperator):
    """Archive prearchive sessions: those given (an upstream XCom such as ``XnatImportOperator``'s or
    ``XnatPrearchiveSensor``'s output, dicts with ``uri`` or project/timestamp/folder), or those selected in
    ``project`` by status (READY), subject, label or study UID.

    ``on_conflict``: ``fail`` (raise :class:`XnatConflictError`), ``append`` (merge into the existing
    experiment: unless ``overwrite`` is given, every prearchive session is archived with ``overwrite="append"``,
    which archives a new one as usual; a conflict even a merge cannot resolve is raised) or ``skip`` (leave it in
    the prearchive, reported as skipped). ``overwrite`` (``append`` or ``delete``) is sent as given. XNAT's
    archive service merges into an existing experiment of the same label even without ``overwrite`` (new scans
    are added; the same files again, another StudyInstanceUID... are conflicts); ``append`` merges past those
    checks; ``delete`` is, for one prearchive session, the same as ``append``: nothing is deleted or replaced,
    the old scans and files stay beside the new ones (see :meth:`XnatClient.archive
    <xnat_provider.client.prearchive.PrearchiveMixin.archive>`).
    ``quarantine=True`` archives them quarantined (XNAT's experiment status ``quarantine``);
    ``trigger_pipelines`` (True/False) tells XNAT whether to run the project's auto-run pipelines.
    ``new_project``/``new_subject``/``new_label`` relabel the archived experiment (one prearchive session only).
    Returns one dict per prearchive session: the experiment's id, label, project, subject, uri, status
    (``archived``, ``already_archived`` or ``skipped``) and the reason for a skip.

    Emits one asset event per archived experiment through the asset alias ``asset_alias`` (default
    ``xnat_archived_sessions``): ``xnat://<host>/<project>/<subject>/<experiment label>`` with the XNAT IDs as
    extra, so downstream DAGs can be scheduled on ``AssetAlias("xnat_archived_sessions")``.
    Safe to retry: a prearchive session that an earlier try archived is found in the archive and reported again.

    :param prearchive_sessions: the prearchive sessions to archive: a list of dicts (or its JSON text as a
        template renders it), or URIs. Rows already in the archive (an import straight to it) are passed over.
    :param sessions: deprecated name of ``prearchive_sessions``.
    :param project: without ``prearchive_sessions``: archive the READY prearchive sessions of this project that
        match the filters below.
    :param subject_filter: only prearchive sessions of this subject label.
    :param experiment_filter: only prearchive sessions with this label (the experiment label they become).
    :param session_filter: deprecated name of ``experiment_filter``.
    :param study_uid: only the prearchive session of this StudyInstanceUID.
    :param overwrite: None, ``append`` or ``delete`` (see above).
    :param new_project: archive into this project instead (one prearchive session only).
    :param new_subject: archive under this subject label instead (one prearchive session only).
    :param new_label: archive under this experiment label instead (one prearchive session only).
    :param on_conflict: ``fail`` (default), ``append`` or ``skip`` (see above).
    :param asset_alias: the asset alias the archived experiments' events are emitted through.
    :param quarantine: archive them quarantined.
    :param trigger_pipelines: whether XNAT runs the project's auto-run pipelines (None: XNAT's default).
    """

    template_fields: Sequence[str] = ("prearchive_sessions", "project", "subject_filter", "experiment_filter",
                                      "study_uid", "new_project", "new_subject", "new_label", "overwrite",
                                      "on_conflict", "xnat_conn_id")
    template_fields_renderers = {"prearchive_sessions": "json"}

    def __init__(self, *, prearchive_sessions: list[dict[str, Any]] | str | None = None,
                 project: str | None = None, subject_filter: str | None = None,
                 experiment_filter: str | None = None, study_uid: str | None = None, overwrite: str | None = None,
                 new_project: str | None = None, new_subject: str | None = None, new_label: str | None = None,
                 on_conflict: str = "fail", asset_alias: str = ARCHIVED_ALIAS, quarantine: bool | None = None,
                 trigger_pipelines: bool | None = None, sessions: list[dict[str, Any]] | str | None = None,
                 session_filter: str | None = None, **kwargs: Any) -> None:
        prearchive_sessions = renamed_argument(self, "prearchive_sessions", prearchive_sessions, "sessions",
                                               sessions)
        experiment_filter = renamed_argument(self, "experiment_filter", experiment_filter, "session_filter",
                                             session_filter)
        outlets = list(kwargs.pop("outlets", None) or [])
        outlets.append(AssetAlias(asset_alias))
        super().__init__(outlets=outlets, **kwargs)
        if prearchive_sessions is None and project is None:
            raise XnatBadInputError("Give the prearchive sessions to archive, or a project to select READY "
                                    "prearchive sessions from.")
        if on_conflict not in ON_CONFLICT and "{{" not in str(on_conflict):  # a template is checked when rendered
            raise XnatBadInputError(f"on_conflict must be one of {ON_CONFLICT}, not {on_conflict!r}")
        self.prearchive_sessions, self.project = prearchive_sessions, project
        self.subject_filter, self.experiment_filter, self.study_uid = subject_filter, experiment_filter, study_uid
        self.overwrite, self.on_conflict, self.asset_alias = overwrite, on_conflict, asset_alias
        self.new_project, self.new_subject, self.new_label = new_project, new_subject, new_label
        self.quarantine, self.trigger_pipelines = quarantine, trigger_pipelines

    def _targets(self, client: Any) -> list[dict[str, Any]]:
        if self.prearchive_sessions is not None:
            rows = structured(self.prearchive_sessions)
            given = rows if isinstance(rows, list) else [rows]
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
                and (self.experiment_filter is None or s.name == self.experiment_filter)]

    @logs_out
    def execute(self, context: Any) -> list[dict[str, Any]]:
        if self.overwrite in ("", "None"):  # what a template that means "no overwrite" renders to
            self.overwrite = None
        if self.overwrite not in OVERWRITE:
            raise XnatBadInputError(f"overwrite must be one of {OVERWRITE[1:]}, not {self.overwrite!r}")
        if self.on_conflict not in ON_CONFLICT:
            raise XnatBadInputError(f"on_conflict must be one of {ON_CONFLICT}, not {self.on_conflict!r}")
        if self.prearchive_sessions is None:
            self.push_prearchive_link(context, str(self.project))  # the prearchive sessions are selected from it
        client = self.hook.get_conn()
        targets = self._targets(client)
        if self.prearchive_sessions is None:
            targets = self._remember_selection(context, targets)
        if (self.new_project or self.new_subject or self.new_label) and len(targets) > 1:
            raise XnatBadInputError(f"Relabelling needs exactly one session; {len(targets)} were selected.")
        host = urlsplit(client.base_url).netloc
        results = []
        for t in targets:
            self.push_prearchive_session_link(context, t["uri"])  # on failure too
            results.append(self._archive_one(client, t))
        for r in results:
            if r["status"] in ("archived", "already_archived"):
                context["outlet_events"][AssetAlias(self.asset_alias)].add(
                    experiment_asset(host, r["project"], r["subject"], r["label"]),
                    extra={"project": r["project"], "subject": r["subject"], "label": r["label"],
                           "experiment_id": r["id"], "subject_id": r["subject_id"], "uri": r["uri"],
                           "xnat_url": client.base_url})
        archived = [r for r in results if r["status"] != "skipped"]
        if archived:
            self.push_experiment_link(context, archived[0]["project"], archived[0]["label"])
        self.log.info("Archived %d, skipped %d", len(archived), len(results) - len(archived))
        return results

    @staticmethod
    def _remember_selection(context: Any, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A selection is made again on a retry, and the prearchive sessions an earlier try archived are no longer
        READY: remember what was selected in the task state store, so a retry reports (and emits events for)
        them."""
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
