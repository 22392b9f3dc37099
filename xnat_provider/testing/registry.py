"""How the emulator is put together, and the interface its XNAT API modules plug into.

The emulator (``emulator.py``) owns one :class:`~xnat_provider.testing.http.Router`, the route registry. Each API
module declares its routes on it in a ``register(router, services)`` function (:class:`ApiModule`), and reaches
the emulator's state only through :class:`Services`: the store, the archive model, the prearchive, the accounts
and the server's switches. No API module imports the emulator, and this module imports no API module, so the
imports only ever point one way (an arrow is "imports"; ``tests/emulator/test_module_structure.py`` checks that
there is no circle, TYPE_CHECKING imports included)::

    __init__, cli, pytest_plugin -> emulator -> server, control, the API modules (*_api, dicom_import)
    the API modules -> registry -> the state: auth -> access -> prearchive -> model -> store
                                              containers -> container_runs -> container_records
                                                 -> container_commands -> model; containers -> store
    all of them -> representations, http -> xnat_routes

Which module serves which part of XNAT's API (paths after ``/data`` or ``/REST``, which ``http.normalise_path``
folds together with ``/data/archive``):

- ``auth_api.py``: ``/`` (the site root), ``JSESSION``, ``services/auth``, ``auth``, ``services/tokens/...``
  and ``/xapi/siteConfig/buildInfo``. The accounts behind them (logins, HTTP sessions, lock-out, alias tokens)
  are ``auth.py``; what the guest may do on a site without ``requireLogin`` is ``access.py``, applied by the
  server before any handler.
- ``archive_api.py``: ``projects``, ``subjects``, ``experiments``, ``scans``, ``assessors``: listings, object
  documents, PUT and DELETE, an experiment's ``status``, a project's ``accessibility``; also :func:`resolve`,
  which turns an archive path into rows, for the other modules. The rows are ``model.py`` over ``store.py``.
- ``files_api.py``: ``.../resources``, ``.../resources/{R}/files[/{path}]``, ``.../files`` (catalogs, listings
  with digests, single files with Range, uploads, zip downloads) and ``services/refresh/catalog``.
- ``dicom_import.py``: ``services/import`` (DICOM-zip and gradual-DICOM), reading zips as Java does
  (``zip_input.py``) and request bodies onto disk (``uploads.py``).
- ``prearchive_api.py``: ``prearchive/projects/...``, ``services/archive`` and
  ``services/prearchive/{move,rebuild,delete}``; the sessions' status machine, building and archiving are
  ``prearchive.py``, moved on by the emulator's clock (``XnatEmulator.tick``; what "now" is, for sessions and
  tokens too, is ``clock.py``: real time, or a ``ManualClock`` a test advances).
- ``site_api.py``: ``/xapi/schemas``, ``search/elements`` and ``services/dicomdump``.
- ``containers_api.py``: the Container Service plugin's ``/xapi/commands``, ``/xapi/.../wrappers/...``
  (enabled, launch UI, launch, bulk launch) and ``/xapi/containers`` (status, history, logs, kill), and XNAT's
  ``workflows/{id}`` (``WorkflowResource``), where a launch's workflow leads to its container. The commands,
  launches and containers themselves are ``containers.py`` (``XnatEmulator.containers``), which runs a
  registered Python callable or subprocess as the container and uploads its outputs through the model; what a
  client sees of the plugin is written up in ``docs/container-service.md``. Its parts: the plugin's vocabulary
  and command JSON (``container_commands.py``), the records and what a runner gets (``container_records.py``),
  and a launch's background life, from resolution to finalization (``container_runs.py``).
- ``control.py``: ``/__emulator__/...``, fault injection and test controls from another process; not XNAT.

Entry points: ``emulator.py`` (:class:`~xnat_provider.testing.XnatEmulator`, which the package exports lazily),
``cli.py`` (the ``xnat-emulator`` command) and ``pytest_plugin.py`` (the ``xnat_emulator`` fixture) are the only
modules that import the emulator.

Plumbing: ``server.py`` runs each request through counting, injected faults (``faults.py``), routing,
authentication, the guest gate and the handler, then writes the answer; ``http.py`` holds the request, response
and router; ``xnat_routes.py`` matches ``/data`` paths against XNAT's own route table (``xnat-routes.txt``);
``representations.py`` writes XNAT's tables and documents; ``samples.py`` makes DICOM studies for tests;
``extra.py`` says how to install the ``testing`` extra when a module of it is missing.

Adding an XNAT endpoint:

1. Find the resource class XNAT serves the path with in ``xnat-routes.txt`` (template, class, methods). Until a
   handler stands for that class, the emulator answers a path of it with 501 ("does not implement").
2. Write the handler (``Request`` -> ``Response``, raising ``XnatHttpError`` for XNAT's error pages) in the API
   module of that part of the API, using what :class:`Services` offers; add a field there only for a new kind
   of state. A new part of the API is a new ``*_api.py`` with its own ``register``, listed in
   ``emulator.API_MODULES``.
3. Declare it in that module's ``register``: ``router.add(methods, pattern, handler, xnat="ClassName")``. The
   pattern's named groups become ``req.route_params``; a ``/data`` route must name classes of the table, or
   ``Router.add`` refuses it, and the router reaches it only for paths XNAT gives to that class.
4. Test it over HTTP in ``tests/emulator/`` with the ``emulator`` and ``http`` fixtures, asserting what XNAT's
   source does (name the class and line); ``test_xnat_routes.py`` already checks that every route the emulator
   serves is one XNAT has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .http import Router

if TYPE_CHECKING:
    from .auth import Auth
    from .containers import Containers
    from .model import Model
    from .prearchive import Prearchive
    from .store import Store


@dataclass
class Settings:
    """The site's switches that handlers read on every request.

    Mutable and shared, not copied into each API module: a test flips one on a running emulator
    (``emulator.range_requests = True``) and the next request sees it."""

    version: str
    range_requests: bool = False
    archive_conflict_status: int = 500  # a merge conflict on archive: 500 (XNAT 1.8.9+) or 409 (older servers)


@dataclass(frozen=True)
class Services:
    """What an API module's handlers may use of the emulator: its state, never the emulator itself.

    Kept to what the handlers actually touch, so that a handler's reach is visible here and an API module needs
    no import of ``emulator.py`` (whose import of the API modules would make a circle). Fault injection, the
    server and the control API are not here: handlers do not use them."""

    store: Store
    model: Model
    auth: Auth
    prearchive: Prearchive
    settings: Settings
    containers: Containers  # the Container Service plugin's commands, launches and containers


class ApiModule(Protocol):
    """A module serving a part of XNAT's API: it declares its routes, each with its XNAT resource class."""

    def register(self, router: Router, services: Services) -> None: ...


def build_router(apis: Iterable[ApiModule], services: Services) -> Router:
    """The emulator's route registry: every API module's routes, in the order of ``apis``.

    The order matters only between routes of the same XNAT class, or outside ``/data``, where the first route
    whose pattern matches serves the request."""
    router = Router()
    for api in apis:
        api.register(router, services)
    return router
