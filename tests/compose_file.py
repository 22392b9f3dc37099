"""``docker/docker-compose.yaml`` read as docker compose reads it: variables substituted the way it substitutes
them (``$$``, ``${NAME:-default}``, ``${NAME:?error}``, ...), anchors and merge keys resolved. Used by the tests of
the file (tests/test_docker.py) and by the distributed test, which runs what the file describes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker" / "docker-compose.yaml"
REQUIRED_SECRETS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")
# Stand-ins for the secrets a user puts in docker/.env (not real keys; only their presence matters to the checks).
SECRETS = {name: f"test-{name.lower()}" for name in REQUIRED_SECRETS}


# --- docker compose's variable substitution: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
# --- ${NAME:?error}, ${NAME?error}, ${NAME:+alternative}, ${NAME+alternative} (no nesting, which we don't use).

class MissingVariable(Exception):
    pass


VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|"
    r"\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


def substitute(text: str, env: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["named"] or m["braced"]
        op, arg, value = m["op"], m["arg"] or "", env.get(name)
        unset_or_empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset_or_empty else value
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return VARIABLE.sub(one, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return substitute(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the anchors and << merge keys


def compose(**env: str) -> dict[str, Any]:
    """The compose file as docker compose would see it with docker/.env holding ``SECRETS`` and ``env``."""
    return interpolate(raw_compose(), {**SECRETS, **env})


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}
