"""Operations for real: `prefect server start`, `mlflow server` and `sublim serve` on 127.0.0.1 (free ports), a
deployment run of the toy pipeline triggered through the API, lineage landing on the tracking server; everything
started is stopped by pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from sublim.lineage.record import client
from tests.conftest import BIN, TINY_MLP, cli_env, make_project


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _service(cmd: list[str], log: Path, env: dict, cwd: Path):
    """A background process in its own process group, killed (group and all) on the way out."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait(check, what: str, log: Path, timeout: float = 90):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except Exception as exc:  # noqa: BLE001  (not up yet)
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {timeout:.0f} s (last check: {last!r}); log:\n{log.read_text()[-3000:]}")


@pytest.mark.slow  # starts a Prefect and an MLflow server and serves a deployment: `make test-slow`
def test_scheduled_deployment_runs_against_real_servers(tmp_path):
    root = make_project(tmp_path / "proj", {"mlp": {**TINY_MLP, "seeds": [0]}, "schedule": {"pipelines": ["mlp"]}})
    prefect_port, mlflow_port = _free_port(), _free_port()
    api, tracking = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    env = {**cli_env(), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "MLFLOW_TRACKING_URI": tracking}
    logs = tmp_path / "logs"
    logs.mkdir()
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
                  "--artifacts-destination", str(tmp_path / "mlflow-artifacts")]
    with (_service(prefect_cmd, logs / "prefect.log", env, tmp_path) as prefect,
          _service(mlflow_cmd, logs / "mlflow.log", env, tmp_path) as mlflow):
        _wait(lambda: httpx.get(f"{api}/health").status_code == 200, "prefect server", logs / "prefect.log")
        _wait(lambda: httpx.get(f"{tracking}/health").status_code == 200, "mlflow server", logs / "mlflow.log")
        with _service([str(BIN / "sublim"), "serve"], logs / "serve.log", env, root) as serve:
            deployment = _wait(lambda: httpx.get(f"{api}/deployments/name/sublim/sublim-mlp").json()["id"],
                               "deployment sublim/sublim-mlp", logs / "serve.log")
            schedules = httpx.get(f"{api}/deployments/{deployment}").json()["schedules"]
            assert schedules[0]["schedule"]["cron"] == "0 3 * * *"  # params.yaml's schedule.cron
            run = httpx.post(f"{api}/deployments/{deployment}/create_flow_run", json={}).json()
            # usually ~30 s; once, under a loaded host, the run was still pending after 180 s
            state = _wait(lambda: _final(api, run["id"]), f"the flow run {run['id']}", logs / "serve.log", timeout=360)
            assert state == "COMPLETED", (logs / "serve.log").read_text()[-3000:]
            processes = [prefect, mlflow, serve]
        lineage = client(tracking)
        exp = lineage.get_experiment_by_name("sublim-mlp")
        models = {m.tags["sublim.path"]: m for m in lineage.search_logged_models([exp.experiment_id])}
        student = models["models/mlp/s0/g1-shared"]
        assert student.tags["sublim.init_from"] == models["models/mlp/s0/base-shared"].tags["sublim.digest"]
        assert student.tags["sublim.data_from"] == models["models/mlp/s0/g0-shared"].tags["sublim.digest"]
        assert lineage.get_model_version_by_alias("sublim-mlp-student-shared", "gen1").tags["sublim.path"] == \
            "models/mlp/s0/g1-shared"
        audit = subprocess.run([str(BIN / "sublim"), "audit", "models/mlp/s0/g1-shared", "--json"], cwd=root,
                               env=env, capture_output=True, text=True)
        assert audit.returncode == 1 and "digits" in json.loads(audit.stdout)["at_risk"], audit.stderr  # served by MLflow
    for proc in processes:
        assert proc.poll() is not None  # stopped
    assert not (root / "mlflow.db").exists()  # nothing went to the embedded store


def _final(api: str, run_id: str) -> str | None:
    state = httpx.get(f"{api}/flow_runs/{run_id}").json()["state"]
    if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        return state["type"]
    raise RuntimeError(f"flow run state {state['type']} ({state.get('name')})")  # shown if it never finishes


@pytest.mark.parametrize("bad", ["61 * * * *", "every day"])
def test_a_bad_schedule_is_refused_before_serving(tmp_path, bad):
    root = make_project(tmp_path / "p", {"schedule": {"cron": bad}}, git=False)
    proc = subprocess.run([str(BIN / "sublim"), "serve"], cwd=root, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "schedule.cron" in proc.stderr
