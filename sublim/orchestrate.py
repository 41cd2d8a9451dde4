"""Prefect-side choices kept out of the flow file: cache keys, result storage, task runners."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sublim import code, progress
from sublim.artifacts import digest
from sublim.config import Runtime
from sublim.job import Job, get_step
from sublim.runner import Outcome


def job_cache_key(job: Job, upstream: dict[str, str], root: Path, threads: int) -> str:
    """Same job, same resolved params and thread count, same step code, same input bytes -> same result.
    `upstream`: the digest of each upstream job's output, by job id. Every driver tags the job's MLflow run
    with it, so a flow finds what `dvc repro` made (`Tracker.recorded_outcome`).

    The parent MLflow run and other per-invocation values are deliberately not part of it.
    """
    h = hashlib.sha256()
    h.update(job.id.encode())
    h.update(str(job.output).encode())  # a cached result names its output: never reuse it for another path
    h.update(json.dumps([(str(role), str(path)) for role, path in job.inputs]).encode())  # roles and order count
    h.update(json.dumps(job.params.model_dump(mode="json"), sort_keys=True).encode())
    h.update(f"threads={threads}".encode())  # float sums, and so digests, depend on it
    h.update(code.job_digest(job).encode())
    for job_id, made in sorted(upstream.items()):
        h.update(f"{job_id}={made}".encode())
    return f"sublim-{job.id}-{h.hexdigest()[:24]}"


def upstream_digests(outcomes: list[Outcome]) -> dict[str, str]:
    return {o.job_id: o.digest for o in outcomes}


def key_on_disk(job: Job, upstream: list[Job], root: Path, threads: int) -> str:
    """The job's cache key from its upstream jobs' outputs as they are on disk (what a DVC stage has)."""
    return job_cache_key(job, {u.id: digest(Path(root) / u.output) for u in upstream}, root, threads)


def result_storage(root: Path) -> dict:
    """Task results (small: paths, digests, metrics) persist inside the project, next to what they describe,
    as JSON: a cached result is read back by validating data, never by unpickling a file."""
    return {"result_storage": Path(root) / ".sublim" / "prefect-results", "result_serializer": "json"}


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

        queue = progress.relay_queue() if progress.relaying() else None
        return ProcessPoolTaskRunner(max_workers=runtime.max_workers, initializer=worker_starts, initargs=(queue,))
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=runtime.max_workers)


def workers_for(plan: Any, workers: int | None, runtime: Runtime) -> int | None:
    """`--workers N` for one pipeline: N worker processes, unless every step of `plan` with more than one job
    computes its jobs as batches (the MLP experiment): then one process, whose batches spread their stacks over
    the cores in lanes (`lanes_for`). Worker processes would each import torch, MLflow and Prefect, and split the
    batches: on 2 cores the MLP flow took 38.3 s in two workers, 26.5 s in one with two lanes (benchmarks,
    demo_mlp). No byte depends on it. A Dask cluster keeps its workers (`runtime`: with --workers applied)."""
    if not workers or workers <= 1 or runtime.task_runner == "dask":
        return workers
    jobs: dict[str, int] = {}
    for job in plan.jobs:
        jobs[job.step_name] = jobs.get(job.step_name, 0) + 1
    return 1 if all(get_step(step).batch is not None for step, n in jobs.items() if n > 1) else workers


def lanes_for(runtime: Runtime, pipeline: str) -> int:
    """Parts of one batch job that may compute at once (`job.side_by_side`): the cores this process's workers
    leave idle. One flow worker on 2 cores trains two stacks of MLP students side by side; with two process
    workers each runs one. A Dask worker's machine is not known here: one."""
    if runtime.task_runner == "dask":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // (runtime.max_workers * runtime.threads_for(pipeline)))


def worker_starts(queue: Any = None) -> None:
    """Process-pool initializer. A worker relays its progress through `queue` (None: the flow's display shows
    nothing), and leaves without CPython's teardown of every module it loaded, as the `sublim` command does:
    with torch, MLflow and Prefect loaded that took 1.5-2.5 s a worker, which each flow's end waited for. Exit
    handlers registered after this one (Prefect's log and event workers flush to the server) still run first."""
    if queue is not None:
        progress.relay_into(queue)
    atexit.register(_leave)
    signal.signal(signal.SIGINT, _stop_jobs)
    signal.signal(STOP_JOBS, _stop_jobs)


STOP_JOBS = signal.SIGUSR2  # what a worker takes as its Ctrl-C once it is ready for it (`worker_starts`)


def interrupt_workers() -> None:
    """Stop the running jobs of this process's worker processes, as a terminal's Ctrl-C does: a SIGTERM reaches
    only the command, and its workers computed on until their jobs ended. Only workers that took `STOP_JOBS`
    over (Linux says so in /proc): one still starting has no job, and a signal would kill it there, breaking the
    pool, whose other workers were then killed before they had marked their runs KILLED. Never the DVC helper
    (it must finish writing dvc.lock), a Prefect server, or the progress relay's manager."""
    for worker in pool_workers():
        with contextlib.suppress(OSError, ValueError):
            if worker.pid is not None and _ready(worker.pid):
                os.kill(worker.pid, STOP_JOBS)


def pool_workers() -> list:
    """This process's task-runner worker processes: its multiprocessing children but the progress relay's
    manager (`progress.relay_queue`), which never ends by itself."""
    import multiprocessing

    return [p for p in multiprocessing.active_children() if not p.name.startswith("SyncManager")]


def _ready(pid: int) -> bool:
    """Whether process `pid` handles `STOP_JOBS` (elsewhere than Linux: assumed)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return not sys.platform.startswith("linux")
    caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (STOP_JOBS - 1) & 1)


def _stop_jobs(signum: int, frame: Any) -> None:
    """A worker's Ctrl-C (the terminal's SIGINT, or `STOP_JOBS` from `interrupt_workers`): its running job stops at
    its loop's next step (its run ends KILLED, nothing is published). Raising here instead would print a
    traceback from every idle worker, and could cut a job's bookkeeping short; the command ends idle workers."""
    progress.interrupt()


def _leave() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
