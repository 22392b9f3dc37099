"""The XNAT Container Service plugin's REST API (``/xapi/...``), and the workflow a launch answers with.

Routes, from the plugin's controllers (``NrgXnat/container-service``, ``src/main/java/org/nrg/containers/rest/``;
``docs/container-service.md`` gives each with its line):

- ``CommandRestApi``: ``GET /xapi/commands`` (``name``, ``version``, ``image``, ``restrictToEnabledForSite``),
  ``GET /xapi/commands/{id}``, ``GET /xapi/commands/available?project=&xsiType=``,
  ``GET /xapi/projects/{p}/commands/available?xsiType=``, ``GET /xapi/commands/available/site?xsiType=``;
- ``CommandConfigurationRestApi``: ``GET|PUT .../enabled`` and ``PUT .../disabled`` on ``/xapi/wrappers/{id}``,
  ``/xapi/commands/{cid}/wrappers/{name}`` and both under ``/xapi/projects/{p}``;
- ``LaunchRestApi``: the launch UI (``GET .../launch``), launches (``POST .../root/{rootElement}/launch``: the
  query-parameter and JSON-body variants, and the project one whose query-parameter path says ``wrapper``) and
  bulk launches (``POST .../root/{rootElement}/bulklaunch``, JSON only);
- ``ContainerRestApi``: ``GET /xapi/containers`` and ``/xapi/projects/{p}/containers`` (``nonfinalized``),
  ``GET /xapi/containers/{id}``, ``POST [/xapi/projects/{p}]/xapi/containers/{id}/kill``,
  ``GET /xapi/containers/{id}/logs`` (zip), ``.../logs/{stdout|stderr}``, ``.../logSince/{file}?since=``;
- XNAT's own ``WorkflowResource``: ``GET /data/workflows/{WORKFLOW_ID}`` (``format=json`` or XML), where a client
  follows a launch to its container (the workflow's ``comments``).

Errors are Spring's: a plain-text body (the controllers' ``@ExceptionHandler`` messages, or XNAT's
``XapiRestControllerAdvice``), not Restlet's HTML page. Not served: command and wrapper creation and update,
command configurations, the deprecated launch paths without ``/root/{rootElement}``, the bulk launch UI,
``POST /xapi/containers`` (paginated listing), ``DELETE`` and ``finalize``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from lxml import etree

from . import representations as rep
from .access import GUEST
from .container_commands import KNOWN_XSI_TYPES, ResolutionError, XapiError, drop_none, matches
from .container_records import XnatObject
from .http import Request, Response, Router, XnatHttpError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .containers import Containers
    from .registry import Services

JSON_TYPE = "application/json;charset=UTF-8"
WRK_NS = "http://nrg.wustl.edu/workflow"
BODY_LIMIT = 1 << 20

# The plugin's routes a client uses, for a route oracle: (methods, template). ``{x}`` is one path segment.
XAPI_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/xapi/commands"), ("GET", "/xapi/commands/{id}"), ("GET", "/xapi/commands/available"),
    ("GET", "/xapi/commands/available/site"), ("GET", "/xapi/projects/{project}/commands/available"),
    ("GET PUT", "/xapi/wrappers/{wrapperId}/enabled"), ("PUT", "/xapi/wrappers/{wrapperId}/disabled"),
    ("GET PUT", "/xapi/commands/{commandId}/wrappers/{wrapperName}/enabled"),
    ("PUT", "/xapi/commands/{commandId}/wrappers/{wrapperName}/disabled"),
    ("GET PUT", "/xapi/projects/{project}/wrappers/{wrapperId}/enabled"),
    ("PUT", "/xapi/projects/{project}/wrappers/{wrapperId}/disabled"),
    ("GET PUT", "/xapi/projects/{project}/commands/{commandId}/wrappers/{wrapperName}/enabled"),
    ("PUT", "/xapi/projects/{project}/commands/{commandId}/wrappers/{wrapperName}/disabled"),
    ("GET", "/xapi/wrappers/{wrapperId}/launch"), ("GET", "/xapi/commands/{commandId}/wrappers/{wrapperName}/launch"),
    ("GET", "/xapi/projects/{project}/wrappers/{wrapperId}/launch"),
    ("GET", "/xapi/projects/{project}/commands/{commandId}/wrappers/{wrapperName}/launch"),
    ("POST", "/xapi/wrappers/{wrapperId}/root/{rootElement}/launch"),
    ("POST", "/xapi/projects/{project}/wrapper/{wrapperId}/root/{rootElement}/launch"),
    ("POST", "/xapi/projects/{project}/wrappers/{wrapperId}/root/{rootElement}/launch"),
    ("POST", "/xapi/commands/{commandId}/wrappers/{wrapperName}/root/{rootElement}/launch"),
    ("POST", "/xapi/projects/{project}/commands/{commandId}/wrappers/{wrapperName}/root/{rootElement}/launch"),
    ("POST", "/xapi/wrappers/{wrapperId}/root/{rootElement}/bulklaunch"),
    ("POST", "/xapi/projects/{project}/wrappers/{wrapperId}/root/{rootElement}/bulklaunch"),
    ("POST", "/xapi/commands/{commandId}/wrappers/{wrapperName}/root/{rootElement}/bulklaunch"),
    ("POST", "/xapi/projects/{project}/commands/{commandId}/wrappers/{wrapperName}/root/{rootElement}/bulklaunch"),
    ("GET", "/xapi/containers"), ("GET", "/xapi/projects/{project}/containers"), ("GET", "/xapi/containers/{id}"),
    ("POST", "/xapi/containers/{id}/kill"), ("POST", "/xapi/projects/{project}/containers/{id}/kill"),
    ("GET", "/xapi/containers/{containerId}/logs"), ("GET", "/xapi/containers/{containerId}/logs/{file}"),
    ("GET", "/xapi/containers/{containerId}/logSince/{file}"),
)


def is_container_service_route(method: str, path: str) -> bool:
    """True when ``method path`` (no query) is one of :data:`XAPI_ROUTES`."""
    for methods, template in XAPI_ROUTES:
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
        if method in methods.split() and re.fullmatch(pattern, path):
            return True
    return False


def _json(value: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(value).encode(), content_type=JSON_TYPE)


def _text(message: str, status: int) -> Response:
    return Response(status=status, body=message.encode(), content_type="text/plain;charset=UTF-8")


def _xapi(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Run a handler as an XAPI endpoint: the guest is not authenticated here (``NotAuthenticatedException``:
    401, no body), and a :class:`XapiError` is a plain-text answer."""
    def run(req: Request) -> Response:
        if req.user in (None, GUEST):
            resp = Response(status=401, body=b"", content_type="text/plain")
            resp.headers["WWW-Authenticate"] = 'Basic realm="XNAT"'
            return resp
        try:
            return handler(req)
        except XapiError as exc:
            if not exc.message:
                return Response(status=exc.status, body=b"", content_type="text/plain")
            return _text(exc.message, exc.status)
    return run


def _request_params(req: Request) -> dict[str, str]:
    """``@RequestParam Map<String, String>``: the query and an urlencoded body, the first value of each name."""
    out: dict[str, str] = {}
    for k, v in req.query + req.form:
        out.setdefault(k, v)
    return out


def _is_json(req: Request) -> bool:
    return req.content_type in ("application/json", "application/json;charset=utf-8") or \
        req.content_type.endswith("+json")


def _json_body(req: Request) -> dict[str, str]:
    """``@RequestBody Map<String, String>``; Jackson's refusals reach the client as 500s through the advice."""
    raw = req.body.read(BODY_LIMIT + 1)
    if not raw.strip():
        raise XapiError(500, "Required request body is missing")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise XapiError(500, f"JSON parse error: {exc}") from exc
    if not isinstance(data, dict):
        raise XapiError(500, "JSON parse error: Cannot deserialize value of type `java.util.LinkedHashMap"
                             "<java.lang.String,java.lang.String>` from a non-object value")
    out: dict[str, str] = {}
    for k, v in data.items():
        if isinstance(v, (dict, list)):
            raise XapiError(500, "JSON parse error: Cannot deserialize value of type `java.lang.String` from "
                                 f"{'Object' if isinstance(v, dict) else 'Array'} value (key \"{k}\")")
        if v is not None:
            out[k] = "true" if v is True else "false" if v is False else str(v)
    return out


def _need_json(req: Request) -> None:
    """A mapping that ``consumes = JSON`` and is the only one for its path: Spring answers 415."""
    if not _is_json(req):
        ctype = req.headers.get("Content-Type") or "application/octet-stream"
        raise XapiError(415, f"Content type '{ctype}' not supported")


class _ContainersApi:
    """The plugin's handlers, over the emulator's Container Service state (``containers.py``), its archive model
    (for projects) and its accounts (for roles)."""

    def __init__(self, services: Services) -> None:
        self.containers = services.containers
        self.model, self.auth = services.model, services.auth

    def admin(self, req: Request) -> bool:
        return self.auth.is_admin(req.user)

    def container_manager(self, req: Request) -> None:
        """``ContainerManagerUserAuthorization``: the ContainerManager role (here: site administrators); 403."""
        if not self.admin(req):
            raise XapiError(403)

    def project_exists(self, project: str) -> None:
        """``@Project`` with ``restrictTo = Read``: ``DataObjectXapiAuthorization`` throws for a missing project,
        and ``XapiRestControllerAdvice.handleNotFoundException`` answers it."""
        if self.model.project(project) is None:
            raise XapiError(404, "Unable to find requested file or resource: The following item(s) don't exist: "
                                 + project)

    def wrapper_of(self, req: Request) -> tuple[dict, dict, int]:
        """The (command, wrapper, wrapper id) a path names, or the plugin's 404."""
        p = req.route_params
        if "wrapper_id" in p:
            wid = int(p["wrapper_id"])
            found = self.containers.wrapper(wid)
            if found is None:
                raise XapiError(404, f"No command with wrapper with id {wid}")
        else:
            wid = self.containers.wrapper_id(int(p["command_id"]), p["wrapper_name"])
            found = self.containers.wrapper(wid)
            assert found is not None
        return found[0], found[1], wid

    # ---- commands -------------------------------------------------------------------------------------------
    def list_commands(self, req: Request) -> Response:
        name, version, image = req.param("name"), req.param("version"), req.param("image")
        if not name and version:
            raise XapiError(400, "Bad request:\nIf \"version\" is specified, must specify \"name\" as well.")
        restrict = (req.param("restrictToEnabledForSite") or "").lower() == "true"
        out = []
        for cmd in self.containers.command_list():
            if (name and cmd["name"] != name) or (version and cmd.get("version") != version) or \
                    (image and cmd["image"] != image):
                continue
            if restrict and not any(self.containers.enabled_for_site(w["id"]) for w in cmd["xnat"]):
                continue
            out.append(cmd)
        return _json(out)

    def get_command(self, req: Request) -> Response:
        return _json(self.containers.command(int(req.route_params["id"])))

    def available(self, req: Request) -> Response:
        project = req.route_params.get("project") or req.param("project")
        xsi = req.param("xsiType")
        if not project or not xsi:
            raise XapiError(400, "Required String parameter '" + ("project" if not project else "xsiType")
                            + "' is not present")
        self.project_exists(project)
        return _json(self.containers.available(project, xsi))

    def available_site(self, req: Request) -> Response:
        xsi = req.param("xsiType")
        if not xsi:
            raise XapiError(400, "Required String parameter 'xsiType' is not present")
        projects = req.param("projects")
        if projects is None:
            return _json(self.containers.available(None, xsi))
        common: list[dict] | None = None
        for p in projects.split(","):
            found = self.containers.available(p.strip(), xsi)
            common = found if not common else [c for c in common if c in found]
        return _json(common or [])

    # ---- enabled / disabled ---------------------------------------------------------------------------------
    def site_enabled(self, req: Request) -> Response:
        self.container_manager(req)
        p = req.route_params
        wid = int(p["wrapper_id"]) if "wrapper_id" in p else self.containers.wrapper_id(int(p["command_id"]),
                                                                                    p["wrapper_name"])
        if req.method == "GET":
            return _json(self.containers.enabled_for_site(wid))
        self.containers.set_enabled(wid, p["switch"] == "enabled")
        return Response(status=200, body=b"", content_type="text/plain")

    def project_enabled(self, req: Request) -> Response:
        p = req.route_params
        project = p["project"]
        # checkPermissionsOrThrow: UnauthorizedException
        if not self.admin(req) and self.model.project(project) is None:
            level = "Edit" if req.method == "GET" else "Delete"
            raise XapiError(401, f"User {req.user} does not have {level} access.")
        wid = int(p["wrapper_id"]) if "wrapper_id" in p else self.containers.wrapper_id(int(p["command_id"]),
                                                                                    p["wrapper_name"])
        if req.method == "GET":
            return _json({"enabled-for-site": self.containers.enabled_for_site(wid),
                          "enabled-for-project": self.containers.enabled_for_project(project, wid), "project": project})
        self.containers.set_enabled(wid, p["switch"] == "enabled", project)
        return Response(status=200, body=b"", content_type="text/plain")

    # ---- launch UI ------------------------------------------------------------------------------------------
    def launch_ui(self, req: Request) -> Response:
        project = req.route_params.get("project")
        if project:
            self.project_exists(project)
        cmd, wrapper, _ = self.wrapper_of(req)
        return _json(build_launch_ui(self.containers, cmd, wrapper, _request_params(req), project))

    # ---- launching ------------------------------------------------------------------------------------------
    def launch(self, req: Request) -> Response:
        p = req.route_params
        project = p.get("project")
        if project:
            self.project_exists(project)
        if p.get("body") == "json":  # /projects/{p}/wrappers/{id}/root/{root}/launch: consumes JSON only
            _need_json(req)
        # Spring picks the JSON-body mapping for a JSON request where a path has both; the project path spelled
        # ``/wrapper/`` has only the query-parameter one, which ignores a body.
        params = _json_body(req) if _is_json(req) and p.get("body") != "query" else _request_params(req)
        command_id = int(p.get("command_id") or 0)
        wrapper_id = int(p.get("wrapper_id") or 0)
        status, report = self.containers.launch(project, command_id, p.get("wrapper_name"), wrapper_id,
                                           p["root"], params, req.user or "")
        return _json(report, status)

    def bulk_launch(self, req: Request) -> Response:
        p = req.route_params
        _need_json(req)
        params = _json_body(req)
        report = self.containers.bulk_launch(p.get("project"), int(p.get("command_id") or 0), p.get("wrapper_name"),
                                        int(p.get("wrapper_id") or 0), p["root"], params, req.user or "")
        return _json(report)

    # ---- containers -----------------------------------------------------------------------------------------
    def list_containers(self, req: Request) -> Response:
        nonfinalized = (req.param("nonfinalized") or "").lower() == "true"
        return _json(self.containers.listing(req.user or "", req.route_params.get("project"), nonfinalized))

    def get_container(self, req: Request) -> Response:
        c = self.containers.find(req.route_params["id"])
        return _json(self.containers.container_json(c, req.user or ""))

    def kill(self, req: Request) -> Response:
        project = req.route_params.get("project")
        if project:
            self.project_exists(project)
        return _text(self.containers.kill(req.route_params["id"], req.user or ""), 200)

    def log_access(self, req: Request) -> Any:
        """``ContainerControlUserAuthorization`` (an ``@AuthDelegate``): container managers and all-data users
        pass; anyone else must have launched the container. For an id the plugin does not know, that check reads
        a null container (a NullPointerException, 500); the administrator gets the controller's 404."""
        key = req.route_params["id"]
        if self.admin(req):
            return self.containers.find(key)
        try:
            c = self.containers.find(key)
        except XapiError as exc:
            raise XapiError(500, "There was an error in the request : null") from exc
        if c.user != req.user:
            raise XapiError(403)
        return c

    def get_log(self, req: Request) -> Response:
        c = self.log_access(req)
        which = req.route_params["file"]
        content, _ = self.containers.log(c, which)
        resp = _text(content, 200)
        resp.content_type = "text/plain"
        resp.headers["Content-Disposition"] = f'attachment; filename="{req.route_params["id"]}-{which}.log"'
        return resp

    def log_since(self, req: Request) -> Response:
        c = self.log_access(req)
        return _json(self.containers.log_since(c, req.route_params["file"], req.param("since")))

    def logs_zip(self, req: Request) -> Response:
        c = self.log_access(req)
        resp = Response(status=200, body=self.containers.logs_zip(c), content_type="application/zip")
        resp.headers["Content-Disposition"] = f'attachment; filename="{req.route_params["id"]}.zip"'
        return resp

    # ---- the workflow ---------------------------------------------------------------------------------------
    def find_workflow(self, req: Request) -> Any:
        """``WorkflowUtils.getUniqueWorkflow``: by its id, or (``/workflows`` without one) by the item's fields
        given as parameters (``wrk:workflowData/ID``, ``.../pipeline_name``, ``.../launch_time``...)."""
        if req.user in (None, GUEST):
            return None
        key = req.route_params.get("workflow_id")
        if key is not None:
            return self.containers.workflows.get(int(key)) if key.isdigit() else None
        wanted = {k.split("/", 1)[-1]: v for k, v in _request_params(req).items()
                  if k.split("/", 1)[-1] in ("ID", "pipeline_name", "launch_time", "scan_id")}
        if not {"ID", "pipeline_name", "launch_time"} <= set(wanted):
            return None
        return next((w for w in list(self.containers.workflows.values())
                     if all(rep.cell(w.data_fields().get(k)) == v for k, v in wanted.items())), None)

    def workflow(self, req: Request) -> Response:
        """``WorkflowResource.represent``: the workflow item, XML unless ``format=json``; 404 when not found."""
        wf = self.find_workflow(req)
        if wf is None:
            raise XnatHttpError(404, "Unable to find the specified workflow.")
        fields = wf.data_fields()
        if req.format("xml") == "json":
            return rep.items_response([rep.item("wrk:workflowData", fields)])
        root = etree.Element(etree.QName(WRK_NS, "Workflow"), nsmap={"wrk": WRK_NS, "xsi": rep.NS["xsi"]})
        for att in ("src", "type", "category", "data_type", "ID", "ExternalID", "status", "create_user",
                    "pipeline_name", "launch_time", "jobID", "scan_id"):
            if fields.get(att) not in (None, ""):
                root.set(att, rep.cell(fields[att]))
        for el in ("comments", "details", "justification"):
            if fields.get(el) not in (None, ""):
                etree.SubElement(root, etree.QName(WRK_NS, el)).text = rep.cell(fields[el])
        return rep.xml_response(root)


def register(router: Router, services: Services) -> None:
    api = _ContainersApi(services)
    seg, num = r"[^/]+", r"\d+"
    proj = rf"/xapi/projects/(?P<project>{seg})"
    by_id = rf"/wrappers/(?P<wrapper_id>{num})"
    by_name = rf"/commands/(?P<command_id>{num})/wrappers/(?P<wrapper_name>{seg})"
    root = rf"/root/(?P<root>{seg})"

    def add(methods: str | tuple[str, ...], pattern: str, handler: Callable[[Request], Response]) -> None:
        router.add(methods, pattern, _xapi(handler))

    add("GET", r"/xapi/commands", api.list_commands)
    add("GET", r"/xapi/commands/available", api.available)
    add("GET", r"/xapi/commands/available/site", api.available_site)
    add("GET", rf"{proj}/commands/available", api.available)
    add("GET", rf"/xapi/commands/(?P<id>{num})", api.get_command)
    for wrapper in (by_id, by_name):
        add(("GET", "PUT"), rf"/xapi{wrapper}/(?P<switch>enabled)", api.site_enabled)
        add("PUT", rf"/xapi{wrapper}/(?P<switch>disabled)", api.site_enabled)
        add(("GET", "PUT"), rf"{proj}{wrapper}/(?P<switch>enabled)", api.project_enabled)
        add("PUT", rf"{proj}{wrapper}/(?P<switch>disabled)", api.project_enabled)
        add("GET", rf"/xapi{wrapper}/launch", api.launch_ui)
        add("GET", rf"{proj}{wrapper}/launch", api.launch_ui)
        add("POST", rf"/xapi{wrapper}{root}/launch", api.launch)
        add("POST", rf"/xapi{wrapper}{root}/bulklaunch", api.bulk_launch)
        add("POST", rf"{proj}{wrapper}{root}/bulklaunch", api.bulk_launch)
    add("POST", rf"{proj}/wrapper/(?P<wrapper_id>{num}){root}/launch", lambda req: api.launch(_with(req, body="query")))
    add("POST", rf"{proj}{by_id}{root}/launch", lambda req: api.launch(_with(req, body="json")))
    add("POST", rf"{proj}{by_name}{root}/launch", api.launch)
    add("GET", r"/xapi/containers", api.list_containers)
    add("GET", rf"{proj}/containers", api.list_containers)
    add("GET", rf"/xapi/containers/(?P<id>{seg})", api.get_container)
    add("POST", rf"/xapi/containers/(?P<id>{seg})/kill", api.kill)
    add("POST", rf"{proj}/containers/(?P<id>{seg})/kill", api.kill)
    add("GET", rf"/xapi/containers/(?P<id>{seg})/logs", api.logs_zip)
    add("GET", rf"/xapi/containers/(?P<id>{seg})/logs/(?P<file>{seg})", api.get_log)
    add("GET", rf"/xapi/containers/(?P<id>{seg})/logSince/(?P<file>{seg})", api.log_since)
    router.add("GET", r"/data/workflows(?:/(?P<workflow_id>[^/]+))?", api.workflow, xnat="WorkflowResource")


def _with(req: Request, **params: str) -> Request:
    req.route_params = {**req.route_params, **params}
    return req


# ---- the launch UI ------------------------------------------------------------------------------------------

def build_launch_ui(containers: Containers, cmd: dict, wrapper: dict, params: dict[str, str],
                    project: str | None) -> dict:
    """``LaunchUi.create`` from the pre-resolved command (``CommandResolutionService.preResolve``): the input
    trees (external inputs and the command inputs no wrapper input provides are roots; derived inputs are
    children) with each input's UI type, and the trees of the values found for the given parameters."""
    ui = _LaunchUi(containers, cmd, wrapper, params, project)
    value_trees = [ui.value_tree(k, i, None, None) for k, i in ui.roots]  # first: the config reads their counts
    return {
        "meta": drop_none({
            "command-id": cmd["id"], "command-name": cmd["name"], "command-label": cmd.get("label"),
            "command-description": cmd.get("description"), "command-metadata": cmd.get("command-metadata"),
            "wrapper-id": wrapper["id"], "wrapper-name": wrapper["name"],
            "wrapper-description": wrapper.get("description"), "image-name": cmd["image"],
            "image-type": cmd["type"]}),
        "container-server-config": {},
        "input-config": [ui.config_tree(k, i) for k, i in ui.roots],
        "input-values": value_trees,
    }


class _LaunchUi:
    """One launch UI being built: the input trees, and how many values each input was found to have (which
    decides its UI type)."""

    def __init__(self, containers: Containers, cmd: dict, wrapper: dict, params: dict[str, str],
                 project: str | None) -> None:
        self.containers, self.params, self.project = containers, params, project
        ext, derived = wrapper["external-inputs"], wrapper["derived-inputs"]
        self.children: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        for d in derived:
            self.children[d["derived-from-wrapper-input"]].append(("derived", d))
        provided = set()
        for i in ext + derived:
            target = i.get("provides-value-for-command-input")
            ci = next((c for c in cmd["inputs"] if c["name"] == target), None)
            if ci is not None:
                self.children[i["name"]].append(("command", ci))
                provided.add(ci["name"])
        self.counts: dict[str, list[int]] = defaultdict(list)
        self.roots = [("external", i) for i in ext] + [("command", c) for c in cmd["inputs"]
                                                       if c["name"] not in provided]

    def values(self, kind: str, inp: dict, parent: XnatObject | None, parent_value: str | None
               ) -> list[tuple[str, str, XnatObject | None]]:
        """An input's values (value, label, the object it is), given its parent's."""
        params, containers = self.params, self.containers
        if kind == "external":
            try:
                obj = containers.resolve_root(inp["type"], params.get(inp["name"], inp.get("default-value")),
                                              self.project)
            except ResolutionError as exc:
                raise XapiError(500, f"The command could not be resolved.\n{exc}") from exc
            return [(obj.uri, obj.label, obj)] if obj else []
        if kind == "command":
            if parent_value is not None:
                return [(parent_value, parent_value, None)]
            value = params.get(inp["name"], inp.get("default-value"))
            return [(value, value, None)] if value is not None else []
        if parent is None:
            return []
        if inp["type"] not in ("Resource", "Scan"):
            value = str(containers.object_json(parent).get(inp.get("derived-from-xnat-object-property") or "id"))
            return [(value, value, None)]
        found = [c for c in containers.children(parent, inp["type"])
                 if matches(inp.get("matcher"), containers.object_json(c))]
        if not found and inp["required"]:
            raise XapiError(400, "The command has failed in the pre-resolution step.\nThe following required fields "
                                 f"cannot be resolved using the provided data: {inp['name']}")
        return [(c.uri, c.label, c) for c in found]

    def value_tree(self, kind: str, inp: dict, parent: XnatObject | None, parent_value: str | None) -> dict:
        vals = self.values(kind, inp, parent, parent_value)
        self.counts[inp["name"]].append(len(vals))
        return {"name": inp["name"], "values": [
            {"value": v, "label": label,
             "children": [self.value_tree(k, child, obj, v) for k, child in self.children[inp["name"]]]}
            for v, label, obj in vals]}

    def config_tree(self, kind: str, inp: dict) -> dict:
        n = self.counts.get(inp["name"]) or [0]
        if inp.get("type") == "boolean":
            ui = "boolean"
        elif kind == "command":
            ui = {"select": "select-one", "multiselect": "select-many", "file": "file"}.get(
                inp.get("type", ""), "password" if inp.get("sensitive") else "text")
        elif min(n) == 0 and max(n) <= 1:
            ui = "text"
        elif max(n) > 1:
            ui = "select-many" if inp.get("multiple") else "select-one"
        else:
            ui = "static"
        return drop_none({
            "name": inp["name"], "label": inp.get("label") or inp["name"], "description": inp.get("description"),
            "advanced": False, "required": inp["required"], "user-settable": True,
            "multiple": bool(inp.get("multiple")) and max(n) > 1, "input-type": ui,
            "select-values": list(inp.get("select-values") or []) if kind == "command" else [],
            "children": [self.config_tree(k, c) for k, c in self.children[inp["name"]] if k != "command"]})


__all__ = ["KNOWN_XSI_TYPES", "XAPI_ROUTES", "build_launch_ui", "is_container_service_route", "register"]
