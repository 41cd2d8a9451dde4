"""Prefect-side choices kept out of the flow file: cache keys, result storage, task runners."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sublim.config import Runtime
from sublim import code, progress
from sublim.job import Job
from sublim.runner import Outcome


def job_cache_key(job: Job, upstream: list[Outcome], root: Path, threads: int) -> str:
    """Same job, same resolved params and thread count, same step code, same input bytes -> same result.

    The parent MLflow run and other per-invocation values are deliberately not part of it.
    """
    h = hashlib.sha256()
    h.update(job.id.encode())
    h.update(str(job.output).encode())  # a cached result names its output: never reuse it for another path
    h.update(json.dumps([(str(role), str(path)) for role, path in job.inputs]).encode())  # roles and order count
    h.update(json.dumps(job.params.model_dump(mode="json"), sort_keys=True).encode())
    h.update(f"threads={threads}".encode())  # float sums, and so digests, depend on it
    h.update(code.job_digest(job).encode())
    for outcome in sorted(upstream, key=lambda o: o.job_id):
        h.update(f"{outcome.job_id}={outcome.digest}".encode())
    return f"sublim-{job.id}-{h.hexdigest()[:24]}"


def result_storage(root: Path) -> dict:
    """Task results (small: paths, digests, metrics) persist inside the project, next to what they describe,
    as JSON: a cached result is read back by validating data, never by unpickling a file."""
    return {"result_storage": Path(root) / ".sublim" / "prefect-results", "result_serializer": "json"}


class EarlyServer:
    """Prefect's own temporary API server (the app, command and settings Prefect runs when PREFECT_API_URL is
    unset), started by the CLI as soon as its arguments check out, so that its boot (~5 s here) overlaps the
    CLI's imports and MLflow checks instead of following them (measured on a small `sublim flow mlp`: 18.7-19.8 s
    -> 14.1 s). Prefect would also import its whole server app into this process first (~2 s); it never does
    here, since the flows run with PREFECT_API_URL naming this server."""

    def __init__(self) -> None:
        import prefect

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process = subprocess.Popen([
            sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
            "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "error", "--lifespan", "on"], env=_server_env())
        atexit.register(self.stop)
        logging.getLogger("sublim").info("Starting temporary Prefect server on %s", self.url)

    @classmethod
    def start(cls) -> EarlyServer | None:
        """A server for this command's flows, unless PREFECT_API_URL names one."""
        from prefect.settings import get_current_settings

        return None if get_current_settings().api.url else cls()

    def wait(self) -> None:
        """Until the server answers (Prefect's own startup timeout; a crashed server is an error at once)."""
        import httpx
        from prefect.settings import get_current_settings

        deadline = time.monotonic() + get_current_settings().server.ephemeral.startup_timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the temporary Prefect server on {self.url} did not answer in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env() -> dict[str, str]:
    """What Prefect gives its temporary server: no UI, ephemeral-mode services, this process's settings."""
    from prefect.settings import get_current_settings

    return {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True)}


@contextmanager
def reporting_to(server: EarlyServer | None) -> Iterator[None]:
    """Flows inside report to `server` (once it answers); None: the configured API.
    Threads Prefect starts itself (forwarding worker processes' logs and events) read the process-global
    settings, not the caller's, and worker processes the environment: both name the server too, as Prefect's
    own test harness does, or each would start a temporary server of its own."""
    if server is None:
        yield
        return
    from prefect.context import SettingsContext, _temporary_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    try:
        server.wait()
        os.environ["PREFECT_API_URL"] = server.url
        with temporary_settings(updates={PREFECT_API_URL: server.url}), \
                _temporary_global_settings_context(SettingsContext.get()):
            yield
    finally:  # the server stops at exit, after Prefect's services have flushed their last logs and events to it
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


def prefect_api_url() -> str:
    """The API this process's flows report to: the configured server, or the ephemeral one (started now, and
    reused by the flow). LocalCluster workers are told it; otherwise each would start an ephemeral server of
    its own (measured here: three servers on two cores, every job twice as slow)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return server.api_url


@contextmanager
def workers_report_here(runtime: Runtime) -> Iterator[None]:
    """Process-pool workers report to this process's Prefect API. Prefect hands each task the submitting
    process's settings, which name no API in ephemeral mode, so every worker started an ephemeral server of its
    own (measured: `sublim flow mlp --workers 2` started three and took 60.7 s, against 48.4 s with one worker)."""
    if runtime.task_runner != "process":
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url()}):
        yield


def task_runner(runtime: Runtime):
    """The Prefect task runner params.yaml asks for: threads, processes, or a Dask cluster."""
    if runtime.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if runtime.dask_address:
            return DaskTaskRunner(address=runtime.dask_address)
        import dask

        # Dask's workers start with MALLOC_TRIM_THRESHOLD_=65536: glibc then hands freed memory back at once
        # and torch's allocations page-fault it back in; measured here, a tinylm job took 18.0 s instead of 11.3 s
        # without it. Keep Dask's other pre-spawn settings; skip its 10 ms stack profiler.
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ, "distributed.worker.profile.enabled": False})
        return DaskTaskRunner(cluster_kwargs={"n_workers": runtime.max_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None,
                                              "env": {"PREFECT_API_URL": prefect_api_url()}})
    if runtime.task_runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        if not progress.relaying():
            return ProcessPoolTaskRunner(max_workers=runtime.max_workers)
        return ProcessPoolTaskRunner(max_workers=runtime.max_workers, initializer=progress.relay_into,
                                     initargs=(progress.relay_queue(),))
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=runtime.max_workers)
