"""The few calls of Airflow 3's REST API (``/api/v2``) the distributed test makes, as a user's script would."""

from __future__ import annotations

import time
from typing import Any

import requests


class AirflowApi:
    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        self.username, self.password = username, password

    def login(self) -> None:
        """A JWT from the auth manager's token endpoint (FAB: ``POST /auth/token``)."""
        answer = self.http.post(f"{self.base}/auth/token", json={"username": self.username,
                                                                "password": self.password}, timeout=30)
        answer.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.http.request(method, f"{self.base}/api/v2{path}", timeout=60, **kwargs)
        if answer.status_code == 401:  # the token expired: once more with a new one
            self.login()
            answer = self.http.request(method, f"{self.base}/api/v2{path}", timeout=60, **kwargs)
        if answer.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json() if answer.content else None

    def healthy(self) -> bool:
        try:
            answer = self.http.get(f"{self.base}/api/v2/monitor/health", timeout=5)
        except requests.RequestException:
            return False
        return answer.ok

    def wait_for_dag(self, dag_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.http.get(f"{self.base}/api/v2/dags/{dag_id}", timeout=30)
            if answer.ok:
                return
            time.sleep(1)
        raise RuntimeError(f"DAG {dag_id} did not appear within {timeout:.0f} s")

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "run_after"})[
            "dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})[
            "task_instances"]

    def log(self, ti: dict, try_number: int) -> str:
        """A try's whole log as text, one line per log event (the API server reads it from the logs folder all
        components share, or from the worker's log server)."""
        path = (f"/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}/logs/"
                f"{try_number}")
        answer = self.http.get(f"{self.base}/api/v2{path}", params={"map_index": ti["map_index"],
                                                                     "full_content": "true"},
                               headers={"Accept": "application/x-ndjson"}, timeout=60)
        answer.raise_for_status()
        return answer.text
