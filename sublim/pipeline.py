"""Glue both drivers share: which MLflow experiment, which parent run, the workspace lock, DVC bookkeeping."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from sublim.artifacts import clean_partials
from sublim.config import Config
from sublim.job import Job
from sublim.lineage.record import Tracker
from sublim.runner import Outcome, quiet, run_job

log = logging.getLogger("sublim")
OUTPUT_ROOTS = ("data", "models", "metrics", "reports")


def experiment_name(cfg: Config, pipeline: str) -> str:
    return f"{cfg.tracking.experiment}-{pipeline}"


def tracker(cfg: Config, pipeline: str, root: Path) -> Tracker:
    return Tracker(root, experiment_name(cfg, pipeline))


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


def run_dvc_stage(cfg: Config, job: Job, root: Path, progress=quiet) -> Outcome:
    """A DVC stage (or a bare `sublim run`): one job, under the parent run shared by all stages of these params."""
    driver = "dvc" if os.environ.get("DVC_STAGE") else "cli"
    track = tracker(cfg, job.pipeline, root)
    parent = track.open_pipeline_run(driver=driver, name=f"{driver}-{cfg.digest()[:8]}",
                                     config=cfg.model_dump(mode="json"), reuse_key=f"{driver}-{cfg.digest()}")
    with workspace_lock(root, cfg.runtime.lock_timeout_s):
        return run_job(job, root=root, tracker=track, threads=cfg.runtime.threads, parent_run_id=parent,
                       driver=driver, progress=progress)


def dvc_commit(root: Path, outputs: list[Path]) -> list[str]:
    """After a flow run, record its outputs in dvc.lock so `dvc repro` sees the stages as up to date.

    Only stages whose every output the flow wrote are committed; returns their names.
    """
    from dvc.repo import Repo

    if not (Path(root) / ".dvc").is_dir():
        return []
    written = {str(p) for p in outputs}
    with Repo(str(root)) as repo:
        stages = [s for s in repo.index.stages if s.outs and all(str(o.def_path) in written for o in s.outs)]
        with repo.lock:
            for stage in stages:
                stage.save(allow_missing=False)
                stage.commit()
                stage.dump(update_pipeline=False)
    return [s.addressing for s in stages]
