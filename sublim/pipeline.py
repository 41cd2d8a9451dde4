"""Glue both drivers share: which MLflow experiment, which parent run, the workspace lock, DVC bookkeeping."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from sublim.artifacts import clean_partials
from sublim.config import PARAMS_FILE, Config
from sublim.job import Job
from sublim.lineage.record import Tracker
from sublim.orchestrate import key_on_disk
from sublim.runner import Outcome, quiet, run_job

log = logging.getLogger("sublim")
OUTPUT_ROOTS = ("data", "models", "metrics", "reports")


def experiment_name(cfg: Config, pipeline: str) -> str:
    return f"{cfg.tracking.experiment}-{pipeline}"


def tracker(cfg: Config, pipeline: str, root: Path) -> Tracker:
    """One Tracker per store and experiment per process: tasks in threads share it (the client is thread-safe),
    instead of paying ~0.2 s of store and experiment lookups per job."""
    from sublim.lineage.record import tracking_uri

    return _tracker(Path(root).resolve(), experiment_name(cfg, pipeline), tracking_uri(root), cfg.tracking.register_models)


@functools.lru_cache(maxsize=16)
def _tracker(root: Path, experiment: str, uri: str, register: bool) -> Tracker:
    return Tracker(root, experiment, uri=uri, register=register)


@contextlib.contextmanager
def workspace_lock(root: Path, timeout: float) -> Iterator[None]:
    """One pipeline writes a workspace at a time; a second one waits, saying why, instead of interleaving."""
    path = Path(root) / ".sublim" / "workspace.lock"
    path.parent.mkdir(exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another sublim pipeline is writing %s; waiting up to %.0f s for %s", root, timeout, path)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise TimeoutError(f"{path}: still locked by another pipeline after {timeout:.0f} s") from None
    try:
        for leftover in (p for r in OUTPUT_ROOTS for p in clean_partials(Path(root) / r)):
            log.warning("removed %s left by an interrupted run", leftover)
        yield
    finally:
        lock.release()


def run_dvc_stage(cfg: Config, job: Job, root: Path, progress=quiet, upstream: list[Job] = ()) -> Outcome:
    """A DVC stage (or a bare `sublim run`): one job, under the parent run shared by all stages of these params.
    `upstream`: the jobs whose outputs it reads, for its cache key (so a later flow takes up what it made)."""
    driver = "dvc" if os.environ.get("DVC_STAGE") else "cli"
    track = tracker(cfg, job.pipeline, root)
    parent = track.open_pipeline_run(driver=driver, name=f"{driver}-{cfg.digest()[:8]}",
                                     config=cfg.model_dump(mode="json"), reuse_key=f"{driver}-{cfg.digest()}")
    threads = cfg.runtime.threads_for(job.pipeline)
    with workspace_lock(root, cfg.runtime.lock_timeout_s):
        ready = all((Path(root) / u.output).exists() for u in upstream)  # else run_job names what is missing
        return run_job(job, root=root, tracker=track, threads=threads, parent_run_id=parent, driver=driver,
                       progress=progress, key=key_on_disk(job, upstream, root, threads) if ready else None)


class DvcSync:
    """Records a flow's outputs in dvc.lock as jobs finish, so `dvc repro` afterwards has nothing to redo.

    What `dvc commit -f STAGE` does, by a helper process (`python -m sublim.dvc_sync`) that keeps the DVC repo
    open and commits each stage while the next job computes, on the other core and off this process's GIL
    (committing in a thread here slowed the training loops by ~10%). Outside a DVC repo it does nothing, and
    for a params file other than the one dvc.yaml reads: dvc.lock would pair params.yaml's values with outputs
    other settings made, and `dvc status` would then call a stale pipeline up to date (`skipped` says why).
    """

    def __init__(self, root: Path, params: Path | None = None):
        self.root = Path(root).resolve()
        self._proc = None
        self._sent = 0
        self.skipped = ""
        in_repo = (self.root / ".dvc").is_dir()
        if in_repo and params is not None and Path(params).resolve() != self.root / PARAMS_FILE:
            self.skipped = (f"dvc.lock not updated: {params} is not the {PARAMS_FILE} dvc.yaml reads "
                            f"(`dvc status` will list the stages whose outputs this run changed)")
        elif in_repo:
            log_file = open(self.root / ".sublim" / "dvc-sync.log", "ab")  # noqa: SIM115 (lives with the helper)
            self._proc = subprocess.Popen([sys.executable, "-m", "sublim.dvc_sync", str(self.root)], text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file)
            log_file.close()

    def commit(self, outputs: list[Path]) -> None:
        """Queue a commit of every stage whose outputs are all among `outputs`."""
        if self._proc is not None:
            self._proc.stdin.write(json.dumps([str(p) for p in outputs]) + "\n")
            self._proc.stdin.flush()
            self._sent += 1

    def finish(self) -> None:
        """No more commits: the helper writes dvc.lock for what it has while this process does other work
        (a flow draws its lineage picture; `close` then waited ~0.4 s more on 2 cores, a 5-seed MLP flow)."""
        if self._proc is not None and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):  # the helper died: `close` says so
                self._proc.stdin.close()

    def close(self) -> list[str]:
        """Wait for the queued commits; return the stages committed."""
        if self._proc is None:
            return []
        self.finish()
        out = self._proc.stdout.read()  # to its end: the jobs are done; their bookkeeping may take a while
        self._proc.wait()
        self._proc.stdout.close()
        if self._proc.returncode != 0:
            raise RuntimeError(f"dvc commit failed (see {self.root / '.sublim' / 'dvc-sync.log'})")
        done = [line.removeprefix("committed ") for line in out.splitlines() if line.startswith("committed ")]
        return [name for line in done for name in json.loads(line)]
