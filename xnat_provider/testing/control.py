"""The emulator's control API, under ``/__emulator__/`` (a path no XNAT uses), for fault injection from
another process. Unauthenticated on purpose: it is a test harness on loopback, not part of XNAT.

- ``GET /__emulator__/faults`` rules and request counts; ``POST`` a JSON rule (see ``faults.py``);
  ``DELETE`` removes every rule;
- ``POST /__emulator__/sessions/expire``: every HTTP session ends now;
- ``POST /__emulator__/prearchive/hold`` ``{"project", "timestamp", "folder", "status"}``; ``.../release``;
- ``POST /__emulator__/files/corrupt`` ``{"uri": "/data/.../files/x.dcm"}``;
- ``POST /__emulator__/containers/hold``, ``.../step`` ``{"count": 1}`` (answers once the launch rests at its next
  step), ``.../release``: the Container Service's launches stepped by hand (``Containers.hold``);
- ``GET /__emulator__/requests?method=GET&path=regex`` a count; ``DELETE`` resets the counts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

from .http import Request, Response, XnatHttpError

if TYPE_CHECKING:
    from .containers import Containers
    from .faults import Faults


class Controlled(Protocol):
    """What the control API drives: the emulator's faults and its test controls (methods of ``XnatEmulator``).

    A protocol, not the emulator class, so that this module does not import ``emulator.py``, which imports it."""

    faults: Faults
    containers: Containers

    def expire_sessions(self) -> int: ...

    def hold_prearchive(self, project: str, timestamp: str, folder: str, status: str = ...) -> None: ...

    def release_prearchive(self, project: str, timestamp: str, folder: str, status: str | None = ...) -> None: ...

    def corrupt_file(self, uri: str) -> None: ...


def _json(value: object, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(value).encode(), content_type="application/json")


class Control:
    """The ``/__emulator__/`` endpoints, answered before routing, fault injection and authentication."""

    def __init__(self, emu: Controlled):
        self.emu = emu

    def _body(self, req: Request) -> dict:
        raw = req.body.read(1 << 20)
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise XnatHttpError(400, f"Invalid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise XnatHttpError(400, "Expected a JSON object.")
        return value

    def handle(self, req: Request) -> Response:
        path, m = req.path, req.method
        emu = self.emu
        try:
            if path == "/__emulator__/faults":
                if m == "GET":
                    return _json(emu.faults.snapshot())
                if m == "DELETE":
                    emu.faults.clear()
                    return _json({"cleared": True})
                if m == "POST":
                    rule = emu.faults.add(**self._body(req))
                    return _json(rule.public(), 201)
            elif path == "/__emulator__/sessions/expire" and m == "POST":
                return _json({"expired": emu.expire_sessions()})
            elif path == "/__emulator__/prearchive/hold" and m == "POST":
                b = self._body(req)
                emu.hold_prearchive(b["project"], b["timestamp"], b["folder"], b.get("status", "BUILDING"))
                return _json({"held": True})
            elif path == "/__emulator__/prearchive/release" and m == "POST":
                b = self._body(req)
                emu.release_prearchive(b["project"], b["timestamp"], b["folder"], b.get("status"))
                return _json({"held": False})
            elif path == "/__emulator__/files/corrupt" and m == "POST":
                emu.corrupt_file(self._body(req)["uri"])
                return _json({"corrupted": True})
            elif path == "/__emulator__/containers/hold" and m == "POST":
                emu.containers.hold()
                return _json({"held": True})
            elif path == "/__emulator__/containers/step" and m == "POST":
                try:
                    emu.containers.step(int(self._body(req).get("count", 1)))
                except (RuntimeError, TimeoutError) as exc:
                    raise XnatHttpError(409, str(exc)) from exc
                return _json({"held": True})
            elif path == "/__emulator__/containers/release" and m == "POST":
                emu.containers.release()
                return _json({"held": False})
            elif path == "/__emulator__/requests":
                if m == "DELETE":
                    emu.faults.reset_counts()
                    return _json({"reset": True})
                if m == "GET":
                    return _json({"count": emu.faults.request_counts(req.param("method"), req.param("path"))})
        except (KeyError, TypeError, ValueError) as exc:
            raise XnatHttpError(400, f"Bad control request: {exc}") from exc
        raise XnatHttpError(404, f"Unknown control endpoint: {m} {path}")
