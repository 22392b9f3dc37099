"""XNAT 1.8's ``/data`` route table, matched as its web framework matches it, so the emulator serves only routes
a real XNAT has.

``xnat-routes.txt`` beside this module is the table XNAT's own source attaches (``XNATApplication.java`` and the
``@XnatRestlet`` classes of ``NrgXnat/xnat`` 1.8.11-SNAPSHOT): URI template, resource class, the methods the class
allows. XNAT's ``/data`` API runs on Restlet 1.1, whose router matches each template as a *prefix* of the path
(``Template.MODE_STARTS_WITH``) and takes the route with the best score (the longest match; the first attached on
a tie). A path that is not exactly a template is therefore not refused: it reaches whichever resource matched the
longest prefix, and the rest of the path is handed to that resource (``SecureResource.filepath``). That is how
``/data/projects/P/experiments/E/scans`` (a route XNAT does not have) ends up at ``ExperimentResource``, which
answers a GET with the experiment's own document and a PUT with 400.

The emulator asks :func:`match` first for every ``/data`` request, and a handler is reached only when XNAT would
reach the same resource class with it (see :class:`~xnat_provider.testing.http.Router`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("xnat-routes.txt")
# Restlet's URI-segment variable: one path segment, never a slash.
_VARIABLE = re.compile(r"\{(\w+)\}")


# The rest of a path some resources read (``SecureResource.filepath``), from their source: a file path below
# ``.../files`` (FileList, PrearcSessionResourceFiles l.103); a prearchive session's ``logs`` and ``logs/{id}``
# (PrearcSessionResource l.117-123). ``/data/prearchive/projects`` reaches the listing of every project, which
# does not read the rest (PrearcSessionListResource): xnatpy lists the prearchive that way. An experiment's
# ``status`` (``quarantine`` or ``active``: ExperimentResource l.99-100, SubjAssessmentResource l.613-615).
ACCEPTED_REST = {
    "FileList": re.compile(r"/.+"),
    "PrearcSessionResourceFiles": re.compile(r"/.+"),
    "PrearcSessionResource": re.compile(r"/logs(?:/[^/]+)?"),
    "PrearcSessionListResource": re.compile(r"/projects"),
    "ExperimentResource": re.compile(r"/status"),
    "SubjAssessmentResource": re.compile(r"/status"),
}


def accepts_rest(resource: str, rest: str) -> bool:
    """True when ``resource`` serves a path that goes on with ``rest`` beyond its template."""
    pattern = ACCEPTED_REST.get(resource)
    return pattern is not None and pattern.fullmatch(rest) is not None


@dataclass(frozen=True)
class XnatRoute:
    """One template of XNAT's table: ``/projects/{PROJECT_ID}/subjects`` -> ``ProjectSubjectList``, GET POST."""

    template: str
    resource: str
    methods: frozenset[str]
    source: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class RouteMatch:
    """Where XNAT sends a ``/data`` path: the route, its template variables, and the unmatched rest of the path
    (empty when the path is exactly the template)."""

    route: XnatRoute
    variables: dict[str, str]
    rest: str


def _compile(template: str) -> re.Pattern[str]:
    parts, last = [], 0
    for m in _VARIABLE.finditer(template):
        parts.append(re.escape(template[last:m.start()]))
        parts.append(f"(?P<{m[1]}>[^/]+)")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))


@functools.cache
def routes() -> tuple[XnatRoute, ...]:
    """The table, in the order XNAT attaches it (which breaks ties between equally long matches)."""
    out = []
    for line in TABLE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        template, resource, methods, source = line.split("\t")
        if template.startswith("/archive/"):
            continue  # /data/archive/X is folded onto /data/X before matching (the table attaches both alike)
        out.append(XnatRoute(template, resource, frozenset(methods.split()), source, _compile(template)))
    return tuple(out)


def match(path: str) -> RouteMatch | None:
    """The route XNAT picks for ``path`` (below ``/data``, without the query), or None when no template matches:
    Restlet then answers 404."""
    best: tuple[int, XnatRoute, re.Match[str]] | None = None
    for route in routes():
        m = route.pattern.match(path)
        if m and (best is None or m.end() > best[0]):
            best = (m.end(), route, m)
    if best is None:
        return None
    end, route, m = best
    return RouteMatch(route, m.groupdict(), path[end:])


def is_exact(method: str, path: str) -> bool:
    """True when XNAT has a route for ``method`` on ``path`` as written: the path is a template of the table, or
    a template followed by a rest its resource reads (:data:`ACCEPTED_REST`), and the resource allows the method.

    Deliberately simple (no scoring): this is the check the tests apply to every request the client sends."""
    for route in routes():
        m = route.pattern.match(path)
        if m is None or not (m.end() == len(path) or accepts_rest(route.resource, path[m.end():])):
            continue
        if method in route.methods or (method == "HEAD" and "GET" in route.methods):
            return True
    return False
