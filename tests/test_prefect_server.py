"""Scheduled nightly runs against a real Prefect server on 127.0.0.1.

Starts ``prefect server start``, registers the deployment both ways the README documents
(``glia serve``: flow.serve on one machine; ``glia deploy``: prefect.yaml + a process work
pool), checks what the server stored (cron, timezone, parameters, one-at-a-time limit),
triggers a run of each, sees it complete, and reads its result: the DuckDB catalog and the
run summary artifact. The server and every process started here are stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from prefect.client.base import PrefectHttpxSyncClient

from conftest import NIGHTS, REPO, free_port, query, wait_healthy

SHARD = NIGHTS[1] / "part-00000.parquet"
PREFECT = Path(sys.executable).with_name("prefect")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# What Prefect's client retries (prefect.client.base.PrefectHttpxSyncClient.send).
RETRYABLE = {408, 429, 502, 503}


@dataclass
class Server:
    """The test's view of one Prefect server: every request goes through Prefect's own HTTP
    client, which retries what the server marks as retryable (408, 429, 502, 503 and dropped
    connections, with backoff), as every Prefect client, worker and runner does.

    The server answers 503 when its SQLite database is busy: with the WAL journal a write
    transaction that started by reading fails at once with SQLITE_BUSY_SNAPSHOT when another
    writer (the scheduler, the event persister, the runner's heartbeats) committed in
    between, without waiting for the busy timeout. Under CPU load that window widens, so a
    plain httpx request fails now and then; ``retried`` keeps the retryable answers seen.
    """

    api: str
    env: dict[str, str]
    home: Path
    retried: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = PrefectHttpxSyncClient(base_url=self.api, timeout=30, raise_on_all_errors=False,
                                           event_hooks={"response": [self._note]})

    def _note(self, response: httpx.Response) -> None:
        if response.status_code in RETRYABLE:
            self.retried.append(f"{response.request.method} {response.request.url.path} -> {response.status_code}")

    def _json(self, response: httpx.Response) -> dict | list:
        response.raise_for_status()
        return response.json()

    def get(self, path: str) -> dict:
        return self._json(self.http.get(path))  # type: ignore[return-value]

    def post(self, path: str, body: dict) -> dict | list:
        return self._json(self.http.post(path, json=body))

    def deployment(self, name: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> dict:
        """Wait until ``name`` is registered: 404 until the registering process has created it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.http.get(f"/deployments/name/nightly_hygiene/{name}")
            if r.status_code == 200:
                return r.json()
            if r.status_code != 404:
                r.raise_for_status()
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"the process that registers {name} exited with {proc.returncode}")
            time.sleep(0.5)
        pytest.fail(f"deployment nightly_hygiene/{name} did not appear within {timeout} s")

    def wait_run(self, flow_run_id: str, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fr = self.get(f"/flow_runs/{flow_run_id}")
            if fr["state_type"] in TERMINAL:
                return fr
            time.sleep(0.5)
        pytest.fail(f"flow run {flow_run_id} did not finish within {timeout} s")

    def artifacts(self, flow_run_id: str) -> list[dict]:
        return self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})  # type: ignore[return-value]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home / "prefect"), GLIA_HOME=str(home / "glia"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", PREFECT_API_URL=f"http://127.0.0.1:{port}/api", NO_COLOR="1", COLUMNS="200",
               # Poll for due runs every second, not every 10-15 s: the test triggers a run and waits for it.
               PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
               # Each 503 the server answers (SQLite busy) is logged, so a failure shows what the server saw.
               PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true")
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    srv = Server(f"http://127.0.0.1:{port}/api", env, home)
    try:
        # /ready, not /health: it answers once the database is migrated and connectable.
        wait_healthy(f"{srv.api}/ready", proc, home / "server.log", 120, "prefect server")
        yield srv
        if srv.retried:
            # Not a failure (Prefect's client retried them), but worth seeing in -ra output.
            print(f"prefect server answered {len(srv.retried)} retryable response(s): {srv.retried[:10]}")
    finally:
        srv.http.close()
        _stop(proc)
        log.close()


def _shards(tmp: Path) -> Path:
    root = tmp / "shards"
    root.mkdir()
    shutil.copy(SHARD, root / SHARD.name)
    return root


def _check_summary(srv: Server, flow_run_id: str, db: Path, n_docs: int) -> None:
    """The run's summary is in DuckDB (run_metrics) and on the flow run's page (a Markdown table)."""
    metrics = dict(query(db, "SELECT metric, value FROM run_metrics WHERE run_id = 1"))
    assert metrics["summary.docs"] == n_docs
    assert metrics["seconds.tag"] > 0 and metrics["seconds.prepare"] > 0
    by_source = {m.split("@", 1)[1]: v for m, v in metrics.items() if m.startswith("summary.docs@")}
    assert sum(by_source.values()) == n_docs and len(by_source) > 1
    arts = [a for a in srv.artifacts(flow_run_id) if a["key"] == "glia-run-summary"]
    assert len(arts) == 1 and arts[0]["type"] == "markdown"
    md = arts[0]["data"]
    assert "# Glia run 1: completed" in md and "## Time per step" in md and "## Documents per source" in md
    assert f"| documents | {n_docs:,} |" in md
    for source, n in by_source.items():
        assert f" {source} " in md
        assert f"| {int(n):,} |" in md or f"| {int(n):,} " in md


def test_glia_serve_runs_on_schedule_server(server: Server, tmp_path: Path) -> None:
    shards = _shards(tmp_path)
    db = tmp_path / "serve.duckdb"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "glia.cli.main", "serve", str(shards), "--db", str(db), "--timezone", "Europe/Berlin",
         "--name", "serve-check"], cwd=REPO, env=server.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        dep = server.deployment("serve-check", proc=proc)
        # What the server stored: the default 03:00 cron in the given timezone, the parameters, one run at a time.
        assert [s["schedule"] for s in dep["schedules"]] == [{"cron": "0 3 * * *", "timezone": "Europe/Berlin", "day_or": True}]
        assert dep["parameters"]["shards_root"] == str(shards) and dep["parameters"]["db_path"] == str(db)
        assert dep["global_concurrency_limit"]["limit"] == 1
        assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        fr = server.post(f"/deployments/{dep['id']}/create_flow_run", {})
        done = server.wait_run(fr["id"])
        assert done["state_type"] == "COMPLETED", (done["state"], (tmp_path / "serve.log").read_text()[-3000:])
    finally:
        _stop(proc)
        log.close()
    n_docs = pq.ParquetFile(SHARD).metadata.num_rows
    assert query(db, "SELECT run_id, status, n_docs FROM runs") == [(1, "completed", n_docs)]
    _check_summary(server, fr["id"], db, n_docs)


def test_prefect_yaml_deploy_runs_on_a_process_worker(server: Server, tmp_path: Path) -> None:
    shards = _shards(tmp_path)
    db = tmp_path / "deploy.duckdb"
    res = subprocess.run(
        [sys.executable, "-m", "glia.cli.main", "deploy", str(shards), "--db", str(db), "--timezone", "America/New_York",
         "--name", "deploy-check", "--pool", "glia-check", "--prefect-file", str(REPO / "prefect.yaml")],
        cwd=REPO, env=server.env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    dep = server.deployment("deploy-check", timeout=5)
    assert dep["entrypoint"] == "flows/deployment.py:nightly_hygiene"
    assert dep["work_pool_name"] == "glia-check"
    assert server.get("/work_pools/glia-check")["type"] == "process"
    assert [s["schedule"]["timezone"] for s in dep["schedules"]] == ["America/New_York"]
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * *"]
    assert dep["global_concurrency_limit"]["limit"] == 1
    fr = server.post(f"/deployments/{dep['id']}/create_flow_run", {})
    worker = subprocess.run([str(PREFECT), "worker", "start", "--pool", "glia-check", "--type", "process", "--run-once"],
                            cwd=tmp_path, env=server.env, capture_output=True, text=True, timeout=240)
    done = server.wait_run(fr["id"], timeout=30)
    assert done["state_type"] == "COMPLETED", (done["state"], worker.stdout[-3000:], worker.stderr[-3000:])
    n_docs = pq.ParquetFile(SHARD).metadata.num_rows
    assert query(db, "SELECT run_id, status, n_docs FROM runs") == [(1, "completed", n_docs)]
    _check_summary(server, fr["id"], db, n_docs)
