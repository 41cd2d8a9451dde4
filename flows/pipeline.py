"""The Prefect flow: every job of a pipeline as a task, run through the same `run_job` DVC stages call.

Tasks are cached on (job, params, step code, input digests), so rerunning an unchanged flow skips finished
jobs; a job whose output was deleted runs again. Parallelism comes from the task runner in params.yaml.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run

from sublim import config
from sublim.orchestrate import job_cache_key, result_storage, task_runner
from sublim.job import Job
from sublim.pipeline import DvcSync, tracker, workspace_lock
from sublim.plan import plan
from sublim.runner import Outcome, run_job


def _cache_key(ctx: TaskRunContext, inputs: dict) -> str:
    return job_cache_key(inputs["job"], inputs["upstream"], Path(inputs["root"]))


@task(cache_key_fn=_cache_key, persist_result=True, task_run_name="{job.id}", retry_delay_seconds=2)
def run(job: Job, root: str, threads: int, parent_run_id: str, upstream: list[Outcome]) -> Outcome:
    """One job. `upstream` carries the digests this job's cache key depends on."""
    track = tracker(config.load(Path(root) / config.PARAMS_FILE), job.pipeline, Path(root))
    return run_job(job, root=Path(root), tracker=track, threads=threads, parent_run_id=parent_run_id, driver="prefect")


@flow(name="sublim", log_prints=True)
def sublim_pipeline(pipeline: str = "mlp", params: str = config.PARAMS_FILE) -> dict:
    """Run every job of `pipeline` in dependency order; summarise what finished and what did not."""
    root = Path(params).resolve().parent
    cfg = config.load(params)
    jobs = plan(cfg, pipeline)
    track = tracker(cfg, pipeline, root)
    parent = track.open_pipeline_run(driver="prefect", name=f"prefect-{flow_run.get_name()}",
                                     config=cfg.model_dump(mode="json"))
    progress = create_progress_artifact(0.0, key=f"{pipeline}-progress", description=f"{pipeline} jobs done")
    finished: dict[str, Outcome] = {}
    with workspace_lock(root, cfg.runtime.lock_timeout_s):
        dvc = DvcSync(root)
        futures = {}
        runner = run.with_options(retries=cfg.runtime.retries, result_storage=result_storage(root))
        for job in jobs.jobs:
            ups = [futures[u.id] for u in jobs.upstream(job)]
            fresh = not (root / job.output).exists()
            futures[job.id] = runner.with_options(refresh_cache=fresh or None).submit(
                job, str(root), cfg.runtime.threads, parent, ups)
        by_future = {f.task_run_id: k for k, f in futures.items()}
        for done, fut in enumerate(as_completed(list(futures.values())), 1):
            job = jobs.get(by_future[fut.task_run_id])
            fut.wait()  # done, but this settles the future's final state
            if fut.state.is_completed():
                finished[job.id] = fut.state.result()
                dvc.commit([job.output, *(dest for _, dest in job.files)])  # while the next job computes
            update_progress_artifact(progress, 100.0 * done / len(futures))
        committed = dvc.close()
    missing = sorted(k for k in futures if k not in finished)
    track.close_pipeline_run(parent, "FINISHED" if not missing else "FAILED")
    summary = next((o.summary_markdown for o in finished.values() if o.summary_markdown), None)
    if missing:
        summary = (summary or "") + "\n\n**Not finished:** " + ", ".join(missing)
        get_run_logger().error("%d jobs did not finish: %s", len(missing), ", ".join(missing))
    if summary:
        create_markdown_artifact(summary, key=f"{pipeline}-results", description=f"{pipeline} results")
    return {"summary": summary, "outcomes": finished, "missing": missing, "dvc_committed": committed}


def build(cfg: config.Config):
    """The flow with the task runner params.yaml asks for."""
    return sublim_pipeline.with_options(task_runner=task_runner(cfg.runtime))
