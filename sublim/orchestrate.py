"""Prefect-side choices kept out of the flow file: cache keys, result storage, task runners."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sublim.config import Runtime
from sublim.job import Job, get_step
from sublim.runner import Outcome


def job_cache_key(job: Job, upstream: list[Outcome], root: Path) -> str:
    """Same job, same resolved params, same step code, same input bytes -> same result.

    The parent MLflow run and other per-invocation values are deliberately not part of it.
    """
    h = hashlib.sha256()
    h.update(job.id.encode())
    h.update(json.dumps(job.params.model_dump(mode="json"), sort_keys=True).encode())
    h.update(get_step(job.step_name).code_digest(root).encode())
    for outcome in sorted(upstream, key=lambda o: o.job_id):
        h.update(f"{outcome.job_id}={outcome.digest}".encode())
    return f"sublim-{job.id}-{h.hexdigest()[:24]}"


def result_storage(root: Path) -> dict:
    """Task results (small: paths, digests, metrics) persist inside the project, next to what they describe,
    as JSON: a cached result is read back by validating data, never by unpickling a file."""
    return {"result_storage": Path(root) / ".sublim" / "prefect-results", "result_serializer": "json"}


def task_runner(runtime: Runtime):
    """The Prefect task runner params.yaml asks for: threads, processes, or a Dask cluster."""
    if runtime.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if runtime.dask_address:
            return DaskTaskRunner(address=runtime.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": runtime.max_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    if runtime.task_runner == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=runtime.max_workers)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=runtime.max_workers)
