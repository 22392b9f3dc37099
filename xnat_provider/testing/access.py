"""What XNAT's guest user may do, on a site that does not require a login (``XnatEmulator(require_login=False)``).

On such a site XNAT never answers 401 to a request without valid credentials: Spring Security's anonymous filter
makes it the ``guest`` user (``SecurityConfig.configure``: ``anonymous().principal("guest")``, and ``/**`` is
``permitAll`` when ``requireLogin`` is false, ``UpdateSecurityFilterHandlerMethod``), and XnatSecureGuard lets it
through (``restlet/guard/XnatSecureGuard.java:108``). That includes a request whose session has expired. Every
resource then looks objects up *as the guest*, through XFT's secured queries, so what the guest may not read
does not exist for it. The guest's reach follows the project's accessibility
(``PermissionsServiceImpl.setDefaultAccessibility``):

- ``private`` (XNAT's default): nothing. Objects and files answer 404, the project's listings 404; the
  prearchive of the project answers 403 ``The current user does not have access to the requested project``.
- ``protected``: the project itself (its document, its row in ``/data/projects``), none of its data: an
  experiment listing comes back empty, the subject listing answers 403 ``Unable to read subjects for Project``.
- ``public``: everything is readable, nothing is writable. A resource PUT answers 403 ``User account doesn't
  have permission to modify this session.`` (``CatalogResource.handlePost``), subject and experiment PUTs 403,
  and a **file PUT or POST answers 200 with an empty body and stores nothing** (``FileList.handlePost`` does its
  work only ``if (Permissions.canEdit(...))`` and sets no status otherwise, so Restlet's default 200 goes out).

Listings without a project (``/data/projects``, ``/data/experiments``, ``/data/subjects``) hold only what the guest
may read (``ProjectListResource``: the projects it has READ on); the prearchive listing without a project holds
the guest's editable projects: none. This module decides the guest's requests before they reach a handler; the
archive listings filter their rows with :func:`guest_reads_project` and :func:`guest_reads_data`.

Not modelled: project sharing, per-user project membership (every logged-in user still sees everything), and
the DICOM dump's ``src`` (not part of the route, so not checked here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import representations as rep
from . import xnat_routes
from .http import Request, Response, XnatHttpError

if TYPE_CHECKING:
    from .model import Model

GUEST = "guest"  # Users.DEFAULT_GUEST_USERNAME

# Resources that answer the guest themselves: who am I, the session, logging in, alias tokens.
_OWN_RULES = frozenset({"UserAuth", "UserSession", "AuthenticationRestlet", "AliasTokenRestlet",
                        "SearchElementListResource", "DicomDump"})
_PREARCHIVE = frozenset({"PrearcSessionListResource", "PrearcSessionResource", "PrearcScansListResource",
                         "PrearcScanResource", "PrearcScanResourceList", "PrearcSessionResourceFiles"})
_PROJECT_LEVEL = frozenset({"ProjectResource", "ProjectAccessibilityResource", "ProjSubExptList"})
_MODIFY_SESSION = "User account doesn't have permission to modify this session."


def project_level(model: Model, pid: str) -> str:
    row = model.store.one("SELECT accessibility FROM projects WHERE id=?", pid)
    return row["accessibility"] if row else "private"


def guest_reads_project(model: Model, pid: str) -> bool:
    """The guest sees the project itself (its document, its row in the project listing)."""
    return project_level(model, pid) in ("protected", "public")


def guest_reads_data(model: Model, pid: str) -> bool:
    """The guest reads the project's subjects, experiments, scans, resources and files."""
    return project_level(model, pid) == "public"


def _target_project(model: Model, params: dict[str, str]) -> str | None:
    """The project a request's path points into, or None (no project in the path, or the object does not exist:
    the handler answers that)."""
    if params.get("project"):
        row = model.project(params["project"])
    elif params.get("projects"):
        return None  # the prearchive listing of several projects: decided per project in guest_gate
    elif params.get("subject_id"):
        row = model.subject(None, params["subject_id"])
        return row["project"] if row else None
    elif params.get("experiment"):
        row = model.experiment(None, params["experiment"])
        return row["project"] if row else None
    else:
        return None
    return row["id"] if row else None


def guest_gate(model: Model, req: Request) -> Response | None:
    """Answer a guest's request as XNAT would when the guest may not do it; None lets the handler answer."""
    found = xnat_routes.match(req.path[len("/data"):]) if req.path.startswith("/data/") else None
    if found is None or found.route.resource in _OWN_RULES:
        return None
    cls = found.route.resource
    write = req.method not in ("GET", "HEAD")
    if cls in _PREARCHIVE:
        return _prearchive(model, req, cls, write)
    pid = _target_project(model, req.route_params)
    if write:
        if pid is None or cls == "ProjectResource":
            # ProjectResource.handlePut/handleDelete: a guest is refused outright; services and creations alike
            raise XnatHttpError(403, "Forbidden")
        if not guest_reads_data(model, pid):
            raise XnatHttpError(404, "Unable to find the specified resource.")
        if cls == "FileList" and req.method in ("PUT", "POST"):
            return Response(status=200, body=b"", content_type="text/plain")  # nothing stored: see the docstring
        if cls in ("CatalogResource", "FileList"):
            raise XnatHttpError(403, _MODIFY_SESSION)
        raise XnatHttpError(403, "Specified user account has insufficient privileges for this project.")
    if pid is None:
        return None  # listings keep to what the guest may read; a missing object answers 404 in its handler
    if cls in _PROJECT_LEVEL:
        if not guest_reads_project(model, pid):
            raise XnatHttpError(404, f"Unable to identify project {req.route_params.get('project', pid)}")
        if req.route_params.get("subject") and not guest_reads_data(model, pid):
            raise XnatHttpError(404, f"Unable to identify subject {req.route_params['subject']}")
        return None  # a protected project's experiment listing: its handler keeps it empty
    if cls == "ProjectSubjectList":
        if not guest_reads_project(model, pid):
            raise XnatHttpError(404, f"Unable to identify project {pid}")
        if not guest_reads_data(model, pid):
            raise XnatHttpError(403, f"Unable to read subjects for Project: {pid}")
        return None
    if not guest_reads_data(model, pid):
        raise XnatHttpError(404, "Unable to find the specified resource.")
    return None


def _prearchive(model: Model, req: Request, cls: str, write: bool) -> Response | None:
    """``PrearcSessionListResource``: a project the guest cannot read is 403; without a project the listing holds
    the guest's editable projects, none. Changes are refused."""
    if write:
        raise XnatHttpError(403, "Forbidden")
    params = req.route_params
    wanted = (params.get("projects") or params.get("project") or "").split(",")
    wanted = [p for p in wanted if p]
    if not wanted:
        from .prearchive import PREARCHIVE_COLUMNS

        return rep.table(req.format("json"), PREARCHIVE_COLUMNS, [], title="Prearchive sessions")
    for p in wanted:
        row = model.project(p)
        if row is not None and not guest_reads_project(model, row["id"]):
            raise XnatHttpError(403, f"The current user does not have access to the requested project: {p}")
    return None
