"""The Prefect flows: every job of a pipeline (or of a sweep of pipelines) as a task, run through the same
`run_job` the DVC stages call.

Tasks are cached on (job, params, step code, input digests), so rerunning an unchanged flow skips finished
jobs; a job whose output was deleted runs again. Parallelism comes from the task runner in params.yaml.
A failed job fails its task (and, after the configured retries, only the jobs downstream of it); the others
finish and the summary lists what is missing.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.futures import as_completed
from prefect.runtime import flow_run

from sublim import code, config, sweep
from sublim.artifacts import digest
from sublim.job import Job
from sublim.orchestrate import job_cache_key, result_storage, task_runner
from sublim.pipeline import DvcSync, tracker, workspace_lock
from sublim.plan import PLANNERS, Plan, plan
from sublim.runner import Outcome, run_job


def _cache_key(ctx: TaskRunContext, inputs: dict) -> str:
    return job_cache_key(inputs["job"], inputs["upstream"], Path(inputs["root"]), inputs["threads"])


@task(cache_key_fn=_cache_key, persist_result=True, task_run_name="{job.id}", retry_delay_seconds=2)
def run(job: Job, root: str, threads: int, parent_run_id: str, upstream: list[Outcome], params: str) -> Outcome:
    """One job. `upstream` carries the digests this job's cache key depends on; `params` is the file the flow
    was started with (its tracking settings apply)."""
    track = tracker(config.load(params), job.pipeline, Path(root))
    return run_job(job, root=Path(root), tracker=track, threads=threads, parent_run_id=parent_run_id, driver="prefect")


def execute(jobs: Plan, cfg: config.Config, root: Path, parent: str, dvc: DvcSync | None, params: str) -> dict[str, Outcome]:
    """Submit each job once its upstream jobs have finished, passing their results as plain values; collect
    what finished, committing each to DVC as it lands. (Submitting a job with its upstream *futures* would make
    Dask place it on the worker holding their results: the whole DAG ends up on one worker.) A job whose
    upstream failed is never submitted; it is reported missing."""
    progress = create_progress_artifact(0.0, key=f"{jobs.pipeline}-progress", description=f"{jobs.pipeline} jobs done")
    runner = run.with_options(retries=cfg.runtime.retries, **result_storage(root))
    upstream = {job.id: jobs.upstream(job) for job in jobs.jobs}
    downstream: dict[str, dict[str, Job]] = {job.id: {} for job in jobs.jobs}
    for job in jobs.jobs:
        for up in upstream[job.id]:
            downstream[up.id][job.id] = job  # once, even if it reads two outputs of the same job
    finished: dict[str, Outcome] = {}
    running: dict = {}  # task run id -> (job, future)

    def submit(job: Job, refresh: bool = False) -> None:
        fresh = refresh or not (root / job.output).exists()
        future = runner.with_options(refresh_cache=fresh or None).submit(
            job, str(root), cfg.runtime.threads_for(jobs.pipeline), parent, [finished[u.id] for u in upstream[job.id]],
            params)
        running[future.task_run_id] = (job, future)

    for job in jobs.jobs:
        if not upstream[job.id]:
            submit(job)
    done = 0
    while running:
        future = next(as_completed([f for _, f in running.values()]))
        job, _ = running.pop(future.task_run_id)
        future.wait()  # done, but this settles the future's final state
        done += 1
        if future.state.is_completed() and stale(future.state, root):
            get_run_logger().warning("%s: cached result names %s, which changed on disk; running it again",
                                     job.id, job.output)
            submit(job, refresh=True)
            continue
        if future.state.is_completed():
            finished[job.id] = future.state.result()
            if dvc:
                dvc.commit([job.output, *(dest for _, dest in job.files)])  # while the next job computes
            for child in downstream[job.id].values():
                if all(u.id in finished for u in upstream[child.id]):
                    submit(child)
        else:
            get_run_logger().error("%s did not finish: %s", job.id, future.state.message)
        update_progress_artifact(progress, 100.0 * done / len(jobs.jobs))
    return finished


def stale(state, root: Path) -> bool:
    """A cached result is reused only while its output on disk still has the digest it recorded."""
    if state.name != "Cached":
        return False
    outcome: Outcome = state.result()
    path = root / outcome.output
    return not path.exists() or digest(path) != outcome.digest


def _lineage_picture(track, run_id: str, out: Path, pipeline: str) -> None:
    """The experiment's lineage graph: files in reports/lineage/<pipeline>/, on the pipeline's MLflow run, and as
    a Mermaid Prefect artifact."""
    from sublim.lineage import graph
    from sublim.lineage.query import Lineage

    g = graph.of_experiment(Lineage(track.client, [track.experiment_id]), track.experiment_id)
    for file in graph.write(g, out):
        track.client.log_artifact(run_id, str(file), "lineage")
    create_markdown_artifact(f"```mermaid\n{g.mermaid()}```\n", key=f"{pipeline}-lineage",
                             description=f"lineage of every model in {track.experiment} (also {out}/lineage.png)")


def _report(pipeline: str, summary: str | None, missing: list[str]) -> str | None:
    if missing:
        summary = (summary or "") + "\n\n**Not finished:** " + ", ".join(missing)
        get_run_logger().error("%d jobs did not finish: %s", len(missing), ", ".join(missing))
    if summary:
        create_markdown_artifact(summary, key=f"{pipeline}-results", description=f"{pipeline} results")
    return summary


@flow(name="sublim", log_prints=True)
def sublim_pipeline(pipeline: str = "mlp", params: str = config.PARAMS_FILE) -> dict:
    """Run every job of `pipeline` in dependency order; summarise what finished and what did not."""
    root = Path(params).resolve().parent
    cfg = config.load(params)
    jobs = plan(cfg, pipeline)
    track = tracker(cfg, pipeline, root)
    parent = track.open_pipeline_run(driver="prefect", name=f"prefect-{flow_run.get_name()}",
                                     config=cfg.model_dump(mode="json"))
    with workspace_lock(root, cfg.runtime.lock_timeout_s):
        dvc = DvcSync(root)
        code.write_manifests(code.pipeline_jobs(cfg, PLANNERS), root)  # the `code` stage's output
        dvc.commit([code.MANIFESTS])
        finished = execute(jobs, cfg, root, parent, dvc, params)
        committed = dvc.close()
    missing = sorted(j.id for j in jobs.jobs if j.id not in finished)
    _lineage_picture(track, parent, root / "reports" / "lineage" / pipeline, pipeline)
    track.close_pipeline_run(parent, "FINISHED" if not missing else "FAILED")
    summary = next((o.summary_markdown for o in finished.values() if o.summary_markdown), None)
    summary = _report(pipeline, summary, missing)
    return {"summary": summary, "outcomes": finished, "missing": missing, "dvc_committed": committed}


@flow(name="sublim-sweep", log_prints=True)
def sublim_sweep(name: str, grid: dict[str, list], pipeline: str = "lm", params: str = config.PARAMS_FILE) -> dict:
    """The pipeline at every point of `grid` (dotted params key -> values) as one DAG, then one table of effects.

    Jobs shared by all points (bases, control teachers and their students) run once. Invalid points and
    points that did not finish are listed in the table rather than failing the whole sweep.
    """
    root = Path(params).resolve().parent
    cfg = config.load(params)
    swept = sweep.build(name, pipeline, config.read_raw(params) or {}, grid)
    track = tracker(cfg, pipeline, root)
    parent = track.open_pipeline_run(driver="prefect", name=f"sweep-{name}-{flow_run.get_name()}",
                                     config={"sweep": name, "grid": grid, **cfg.model_dump(mode="json")})
    with workspace_lock(root, cfg.runtime.lock_timeout_s):  # sweeps/ is outside dvc.yaml: `dvc add` to version it
        finished = execute(swept.plan, cfg, root, parent, None, params)
        table = sweep.table_job(swept, {o.output for o in finished.values()})
        outcome = run.with_options(**result_storage(root)).submit(
            table, str(root), cfg.runtime.threads_for(pipeline), parent, list(finished.values()), params).result()
    missing = sorted(j.id for j in swept.plan.jobs if j.id not in finished)
    track.close_pipeline_run(parent, "FINISHED" if not missing and not swept.invalid else "FAILED")
    summary = _report(f"sweep-{_key(name)}", outcome.summary_markdown, missing)
    return {"summary": summary, "outcomes": {**finished, table.id: outcome}, "missing": missing,
            "invalid": swept.invalid, "table": str(table.output)}


def _key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def build(cfg: config.Config, which=sublim_pipeline):
    """A flow with the task runner params.yaml asks for."""
    return which.with_options(task_runner=task_runner(cfg.runtime))
