"""Prefect's temporary API server, started by the CLI before anything heavy is imported: a module of its own,
importing nothing of sublim's, so the server boots while the rest of the command loads."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class EarlyServer:
    """Prefect's own temporary API server (the app, command and settings Prefect runs when PREFECT_API_URL is
    unset), started by the CLI as soon as its arguments check out, so that its boot (~5 s here) overlaps the
    CLI's imports and MLflow checks instead of following them (a small `sublim flow mlp`, median of 3: 19.8 s ->
    14.9 s). Prefect would also import its whole server app into this process first (~2 s); it never does here,
    since the flows run with PREFECT_API_URL naming this server."""

    def __init__(self) -> None:
        self._spawn()
        atexit.register(self.stop)

    def _spawn(self) -> None:
        import prefect

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process = subprocess.Popen([
            sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
            "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "error", "--lifespan", "on"], env=_server_env(),
            # its own session: a Ctrl-C reaches the CLI, which stops the server once Prefect has flushed to it (in
            # the terminal's process group it died at once, and Prefect retried it for minutes)
            start_new_session=True, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        logging.getLogger("sublim").info("Starting temporary Prefect server on %s", self.url)

    @classmethod
    def start(cls) -> EarlyServer | None:
        """A server for this command's flows, unless PREFECT_API_URL names one."""
        from prefect.settings import get_current_settings

        return None if get_current_settings().api.url else cls()

    def wait(self) -> None:
        """Until the server answers, within Prefect's own startup timeout. A server that exits (its port taken
        meanwhile) is started again on another port, twice; then it is an error."""
        import httpx
        from prefect.settings import get_current_settings

        deadline = time.monotonic() + get_current_settings().server.ephemeral.startup_timeout_seconds
        respawns = 2  # the free port was released for uvicorn to bind: another process may have taken it since
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if not respawns:
                    raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode}")
                respawns -= 1
                self._spawn()
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


def _die_with_parent() -> None:
    """In the server's process before it starts (Linux): SIGTERM when the CLI dies, even killed without its exit
    handlers (a SIGTERM or SIGKILL from a scheduler or a cancelled CI job), so no server outlives it."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


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
    settings, not the caller's: those name the server too, as Prefect's own test harness does, or each would
    start a temporary server of its own. Worker processes get the settings with each task."""
    if server is None:
        yield
        return
    from prefect.context import SettingsContext, _temporary_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server.wait()  # it stops at exit, after Prefect's services have flushed their last logs and events to it
    with temporary_settings(updates={PREFECT_API_URL: server.url, **for_temporary_server()}), \
            _temporary_global_settings_context(SettingsContext.get()):
        yield


def for_temporary_server() -> dict:
    """Settings for flows reporting to a server that stops with this command (this module's, or the one Prefect
    starts itself when PREFECT_API_URL is unset). No UI URL: it has no UI, so Prefect's "View at <url>" lines
    would be dead links. No flow-run heartbeats: they let a lasting server mark a vanished run Crashed, but this
    one is gone with the run, and stopping the heartbeat thread held each flow's end up to 1 s (0.5 s on average)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_UI_URL

    return {PREFECT_UI_URL: "", PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


@contextmanager
def temporary_unless_configured() -> Iterator[None]:
    """`for_temporary_server` where Prefect will start its own temporary server (PREFECT_API_URL unset): flows run
    in-process by the bench and the tests; a configured server keeps Prefect's defaults."""
    from prefect.settings import get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    with temporary_settings(updates=for_temporary_server()):
        yield
