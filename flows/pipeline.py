"""The Prefect flows: every job of a pipeline (or of a sweep of pipelines) as a task, run through the same
`run_job` the DVC stages call.

Tasks are cached on (job, params, step code, input digests), so rerunning an unchanged flow skips finished
jobs; a job whose output was deleted runs again. Parallelism comes from the task runner in params.yaml.
A failed job fails its task (and, after the configured retries, only the jobs downstream of it); the others
finish and the summary lists what is missing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.exceptions import TerminationSignal
from prefect.futures import as_completed
from prefect.results import ResultStore, resolve_result_storage
from prefect.runtime import flow_run, task_run
from prefect.serializers import JSONSerializer
from prefect.states import Failed, State

from sublim import code, config, progress, sweep
from sublim.artifacts import digest
from sublim.job import Job, TrainingDiverged, get_step
from sublim.orchestrate import (interrupt_workers, job_cache_key, lanes_for, result_storage, task_runner,
                                upstream_digests, workers_report_here)
from sublim.pipeline import DvcSync, tracker, workspace_lock
from sublim.prefect_server import temporary_unless_configured
from sublim.plan import PLANNERS, Plan, plan
from sublim.runner import Outcome, run_job, run_jobs


def _cache_key(ctx: TaskRunContext, inputs: dict) -> str:
    return job_cache_key(inputs["job"], upstream_digests(inputs["upstream"]), Path(inputs["root"]), inputs["threads"])


# Errors the same job raises again (same inputs, seed and threads give the same floats): a retry only spends
# the time again
DETERMINISTIC = (TrainingDiverged,)


def _worth_retrying(task, task_run, state) -> bool:
    """Prefect's retry condition: not an error the same job would raise again (a diverged training)."""
    return not isinstance(state.data, DETERMINISTIC)


@task(cache_key_fn=_cache_key, persist_result=True, task_run_name="{job.id}", retry_delay_seconds=2,
      retry_condition_fn=_worth_retrying)
def run(job: Job, root: str, threads: int, parent_run_id: str, upstream: list[Outcome], params: str) -> Outcome:
    """One job. `upstream` carries the digests this job's cache key depends on; `params` is the file the flow
    was started with (its tracking settings apply)."""
    logger = get_run_logger()
    logger.info("started %s -> %s", job.id, job.output)
    progress.current().started(job.id, str(task_run.id))
    track = tracker(config.load(params), job.pipeline, Path(root))
    outcome = run_job(job, root=Path(root), tracker=track, threads=threads, parent_run_id=parent_run_id,
                      driver="prefect", progress=progress.steps,
                      key=job_cache_key(job, upstream_digests(upstream), Path(root), threads))
    logger.info("finished %s", _result_line(outcome))
    return outcome


@dataclass(frozen=True)
class Failure:
    """A job of a batch that failed on its own too (the others of its batch are unaffected)."""

    job_id: str
    message: str


def _group_name() -> str:
    return progress.batch_label([j.id for j in task_run.parameters["jobs"]])


@task(task_run_name=_group_name, persist_result=False)
def run_group(jobs: list[Job], root: str, threads: int, parent_run_id: str, params: str,
              retries: int, keys: list[str], lanes: int = 1) -> list[Outcome | Failure] | State:
    """Jobs of one batchable step and params (seeds, inits) computed as one batch; each still gets its own
    artifact, digest, MLflow run and lineage. If the batch fails, each job runs alone (same bytes, by the
    batching guarantee) with `retries` retries, so one bad job fails only itself. A batch with failed jobs ends
    Failed (the Prefect UI shows it so, naming them), its state still carrying every job's result."""
    logger = get_run_logger()
    label = _group_name()
    logger.info("started %s: %s", label, ", ".join(j.id for j in jobs))
    progress.current().started(label, str(task_run.id))
    track = tracker(config.load(params), jobs[0].pipeline, Path(root))
    kwargs = dict(root=Path(root), tracker=track, threads=threads, parent_run_id=parent_run_id, driver="prefect",
                  progress=progress.steps)
    outcomes = _batch(jobs, keys, kwargs, lanes, retries, logger, label)
    for o in outcomes:
        if isinstance(o, Outcome):
            logger.info("finished %s", _result_line(o))
    failed = [o.job_id for o in outcomes if isinstance(o, Failure)]
    if failed:
        return Failed(message=f"{len(failed)} of {len(jobs)} jobs failed: {', '.join(failed)}", data=outcomes)
    return outcomes


def _batch(jobs: list[Job], keys: list[str], kwargs: dict, lanes: int, retries: int, logger,
           label: str) -> list[Outcome | Failure]:
    """The jobs as one batch. A training that diverged names its job: that job fails (alone it would diverge
    again, to the same bytes) and the others run again as a batch, once (a second divergence, e.g. a learning
    rate too high for every seed, would cost a batch per job). Any other error runs each job alone, so one
    bad job fails only itself."""
    failed: dict[str, Failure] = {}
    pending = list(zip(jobs, keys))
    while pending:
        try:
            done = run_jobs([j for j, _ in pending], **kwargs, keys=[k for _, k in pending], lanes=lanes)
            return [failed.get(j.id) or next(o for o in done if o.job_id == j.id) for j in jobs]
        except TrainingDiverged as exc:
            if failed or exc.job_id not in {j.id for j, _ in pending}:
                error: Exception = exc
                break
            logger.error("%s failed: %s", exc.job_id, exc)
            failed[exc.job_id] = Failure(exc.job_id, f"{type(exc).__name__}: {exc}")
            pending = [(j, k) for j, k in pending if j.id != exc.job_id]
        except Exception as exc:  # noqa: BLE001  (isolated below: each job alone)
            error = exc
            break
    else:
        return [failed[j.id] for j in jobs]
    if len(pending) > 1:
        logger.warning("%s failed (%s); running its jobs one by one", label, error)
    else:
        logger.error("%s failed: %s", pending[0][0].id, error)
    alone = {j.id: _alone(j, {**kwargs, "key": k}, retries if len(pending) > 1 else retries - 1, logger, error)
             for j, k in pending}
    return [failed.get(j.id) or alone[j.id] for j in jobs]


def _alone(job: Job, kwargs: dict, retries: int, logger, seen: Exception) -> Outcome | Failure:
    """The job alone, with `retries` retries (-1: none left, the batch of one was its only attempt); its failure
    names the last error, `seen` (the batch's) where it was not run again."""
    last = f"{type(seen).__name__}: {seen}"
    for attempt in range(retries + 1):
        try:
            return run_job(job, **kwargs)
        except Exception as exc:  # noqa: BLE001  (reported as this job's failure)
            logger.error("%s failed (attempt %d of %d): %s", job.id, attempt + 1, retries + 1, exc)
            last = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, DETERMINISTIC):
                break
    return Failure(job.id, last)


def _result_line(o: Outcome) -> str:
    return f"{o.job_id} -> {o.output} md5 {o.digest}; {progress.describe([o])}"


@dataclass
class Scheduler:
    """Submits each job once its upstream jobs have finished, passing their results as plain values (submitting
    with upstream *futures* would make Dask place the whole DAG on the worker holding them). Ready jobs of one
    batchable step and params run as one batch task (split over the workers of a parallel runner); a job whose
    cached result still matches its output on disk is not run again. A job whose upstream failed is never
    submitted; it is reported missing."""

    plan: Plan
    cfg: config.Config
    root: Path
    parent: str
    dvc: DvcSync | None
    params: str
    finished: dict[str, Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threads = self.cfg.runtime.threads_for(self.plan.pipeline)
        self.lanes = lanes_for(self.cfg.runtime, self.plan.pipeline)
        self.single = run.with_options(retries=self.cfg.runtime.retries, **result_storage(self.root))
        self.store = ResultStore(result_storage=resolve_result_storage(result_storage(self.root)["result_storage"]),
                                 serializer=JSONSerializer())
        self.upstream = {job.id: self.plan.upstream(job) for job in self.plan.jobs}
        self.downstream: dict[str, dict[str, Job]] = {job.id: {} for job in self.plan.jobs}
        for job in self.plan.jobs:
            for up in self.upstream[job.id]:
                self.downstream[up.id][job.id] = job  # once, even if it reads two outputs of the same job
        self.running: dict = {}  # task run id -> (jobs, future, kind)
        self.report = progress.current()

    def key(self, job: Job) -> str:
        return job_cache_key(job, upstream_digests([self.finished[u.id] for u in self.upstream[job.id]]), self.root,
                             self.threads)

    def cached(self, job: Job) -> Outcome | None:
        """The stored result of this exact job (same params, code, inputs), if its output still has that digest;
        else, if its output is on disk, the outcome MLflow holds of a run of this exact job that made it (`dvc
        repro` or `sublim run` did), stored for the next time."""
        key = self.key(job)
        try:
            outcome = self.store.read(key).result if self.store.exists(key) else None
        except Exception:  # noqa: BLE001  (an unreadable record is a cache miss)
            outcome = None
        path = self.root / job.output
        if outcome is not None:
            return outcome if path.exists() and digest(path) == outcome.digest else None
        if not path.exists():
            return None
        told = tracker(self.cfg, job.pipeline, self.root).recorded_outcome(key, digest(path))
        if told is None:
            return None
        outcome = Outcome(**{**told, "figures": tuple(told["figures"])})
        self.store.write(obj=outcome, key=key)
        return outcome

    def submit(self, jobs: list[Job]) -> None:
        """Submit ready jobs: batchable ones grouped by step and params, the others one task each."""
        groups: dict[tuple[str, str], list[Job]] = {}
        unblocked: list[Job] = []
        for job in jobs:
            hit = self.cached(job)
            if hit is not None:
                self.report.finished([hit], cached=True)
                unblocked += self._done(job, hit)
            elif get_step(job.step_name).batch is None:
                self._single(job)
            else:
                groups.setdefault((job.step_name, job.params.model_dump_json()), []).append(job)
        if unblocked:
            self.submit(list({j.id: j for j in unblocked}.values()))
        for group in groups.values():
            for chunk in _split(group, self._parallel()):
                future = run_group.submit(chunk, str(self.root), self.threads, self.parent, self.params,
                                          self.cfg.runtime.retries, [self.key(j) for j in chunk], self.lanes)
                self.running[future.task_run_id] = (chunk, future, "group")

    def _parallel(self) -> int:
        return self.cfg.runtime.max_workers if self.cfg.runtime.task_runner != "thread" else 1

    def _single(self, job: Job, refresh: bool = False) -> None:
        fresh = refresh or not (self.root / job.output).exists()
        future = self.single.with_options(refresh_cache=fresh or None).submit(
            job, str(self.root), self.threads, self.parent, [self.finished[u.id] for u in self.upstream[job.id]],
            self.params)
        self.running[future.task_run_id] = ([job], future, "single")

    def _done(self, job: Job, outcome: Outcome) -> list[Job]:
        """Record a finished job; return the jobs it made ready."""
        self.finished[job.id] = outcome
        if self.dvc:
            self.dvc.commit([job.output, *(dest for _, dest in job.files)])  # while the next job computes
        return [child for child in self.downstream[job.id].values()
                if all(u.id in self.finished for u in self.upstream[child.id])]

    def run(self) -> dict[str, Outcome]:
        self.report.begin(self.plan.pipeline, len(self.plan.jobs))
        artifact = create_progress_artifact(0.0, key=f"{_key(self.plan.pipeline)}-progress",
                                            description=f"{self.plan.pipeline} jobs done")
        self.submit([job for job in self.plan.jobs if not self.upstream[job.id]])
        while self.running:
            future = next(as_completed([f for _, f, _ in self.running.values()]))
            if progress.interrupted():  # a Ctrl-C whose KeyboardInterrupt did not reach this loop
                raise KeyboardInterrupt
            jobs, _, kind = self.running.pop(future.task_run_id)
            future.wait()  # done, but this settles the future's final state
            ready = self._settle(jobs, future, kind)
            if ready:
                self.submit(list({j.id: j for j in ready}.values()))
            update_progress_artifact(artifact, 100.0 * len(self.finished) / len(self.plan.jobs))
        return self.finished

    def _settle(self, jobs: list[Job], future, kind: str) -> list[Job]:
        logger = get_run_logger()
        self.report.settled(str(future.task_run_id))
        results = _results(future.state, kind)
        if results is None:
            for job in jobs:
                logger.error("%s did not finish: %s", job.id, future.state.message)
                self.report.failed(job.id, future.state.message or "")
            return []
        if kind == "single" and stale(future.state, self.root):
            logger.warning("%s: cached result names %s, which changed on disk; running it again", jobs[0].id,
                           jobs[0].output)
            self._single(jobs[0], refresh=True)
            return []
        done = [r for r in results if isinstance(r, Outcome)]
        if done:
            self.report.finished(done, cached=future.state.name == "Cached")
        ready = []
        for job, result in zip(jobs, results):
            if isinstance(result, Failure):
                logger.error("%s did not finish: %s", job.id, result.message)
                self.report.failed(job.id, result.message)
                continue
            if kind == "group":
                self.store.write(obj=result, key=self.key(job))  # so a rerun, or a lone job, finds it
            ready += self._done(job, result)
        return ready


def _results(state: State, kind: str) -> list | None:
    """A finished task's results, one per job: a single job's outcome, or a batch's outcomes and failures (its
    state Failed when some jobs failed); None when the task itself failed."""
    if state.is_completed():
        return state.result() if kind == "group" else [state.result()]
    data = state.result(raise_on_failure=False) if kind == "group" and state.is_failed() else None
    return data if isinstance(data, list) else None


def _split(group: list[Job], parts: int) -> list[list[Job]]:
    """`group` in `parts` nearly equal consecutive chunks (one per worker of a parallel runner)."""
    parts = max(1, min(parts, len(group)))
    size = -(-len(group) // parts)
    return [group[i:i + size] for i in range(0, len(group), size)]


def execute(jobs: Plan, cfg: config.Config, root: Path, parent: str, dvc: DvcSync | None,
            params: str) -> dict[str, Outcome]:
    """Run every job of `jobs` in dependency order; return what finished."""
    with workers_report_here(cfg.runtime):
        return Scheduler(jobs, cfg, root, parent, dvc, params).run()


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
    if not g.nodes:  # nothing recorded yet (the first job failed): no picture to draw
        return
    for file in graph.write(g, out):
        track.client.log_artifact(run_id, str(file), "lineage")
    create_markdown_artifact(f"```mermaid\n{g.mermaid()}```\n", key=f"{pipeline}-lineage",
                             description=f"lineage of every model in {track.experiment} (also {out}/lineage.png)")


def _summary_of(jobs: Plan, finished: dict[str, Outcome]) -> str | None:
    """The pipeline's result: its summary job's text (other jobs may write one too: each probe of the detection
    pipeline has its panel), else the first finished job's that has one."""
    ordered = sorted(jobs.jobs, key=lambda j: j.step != "summary")
    return next((finished[j.id].summary_markdown for j in ordered if j.id in finished
                 and finished[j.id].summary_markdown), None)


def _headed(pipeline: str, cfg: config.Config, summary: str | None) -> str | None:
    """A confirmation's result says it is one (its table is the tuning run's table on other seeds). It states
    what is checked (no confirmation seed is a tuning seed of these params), not the seeds' history."""
    if not summary or not pipeline.endswith("-confirm"):
        return summary
    seeds = progress.span(sorted(cfg.confirm.seeds)).removeprefix("s")
    return (f"### Confirmation: the {pipeline.removesuffix('-confirm')} experiment on confirm.seeds {seeds} (none "
            f"of them a tuning seed in these params), verdicts at α = {cfg.confirm.alpha:g}\n\n{summary}")


NOT_FINISHED = "\n\n**Not finished:** "  # the summary's last paragraph when jobs did not finish


def _report(pipeline: str, summary: str | None, missing: list[str]) -> str | None:
    if missing:
        summary = (summary or "") + NOT_FINISHED + ", ".join(missing)
        get_run_logger().error("%d jobs did not finish: %s", len(missing), ", ".join(missing))
    if summary:
        create_markdown_artifact(summary, key=f"{pipeline}-results", description=f"{pipeline} results")
    return summary


def run_name(pipeline: str, params: str, sweep_name: str | None = None) -> str:
    """A flow run's name says what it is: pipeline, seeds and params digest (a sweep: its name and grid size),
    e.g. `mlp s0-4 params-3fa2c1d0`, instead of Prefect's random words."""
    try:
        cfg = config.load(params)
    except config.ConfigError:
        return f"{pipeline} (invalid params)"
    seeds = getattr(getattr(cfg, pipeline, None), "seeds", None)
    what = f"{pipeline} {progress.span(sorted(seeds))}" if seeds else pipeline
    prefix = "" if sweep_name is None else "sweep " if sweep_name == "sweep" else f"sweep {sweep_name} "
    return f"{prefix}{what} params-{cfg.digest()[:8]}"


def _pipeline_run_name() -> str:
    p = flow_run.parameters
    return run_name(p.get("pipeline", "mlp"), p.get("params", config.PARAMS_FILE))


def _sweep_run_name() -> str:
    p = flow_run.parameters
    points = 1
    for values in (p.get("grid") or {}).values():
        points *= len(values)
    return f"{run_name(p.get('pipeline', 'lm'), p.get('params', config.PARAMS_FILE), p.get('name'))} ({points} points)"


@contextlib.contextmanager
def _killed_on_interrupt(track, run_id: str) -> Iterator[None]:
    """Ctrl-C or a SIGTERM ends the pipeline's MLflow run KILLED at once (it stayed RUNNING until the next
    flow reaped it), and the running jobs at their loops' next step (the task runner waits for them before the
    command can end); an error is the caller's to report."""
    progress.interrupt(False)
    try:
        with _ctrl_c_stops_jobs():
            yield
    except (KeyboardInterrupt, TerminationSignal):
        _second_sigterm_kills()
        progress.interrupt()
        interrupt_workers()  # a SIGTERM, or a `kill -INT`, reaches this process only (a worker takes it twice alike)
        with contextlib.suppress(Exception):  # the store may be what is going away
            track.close_pipeline_run(run_id, "KILLED")
        raise


@contextlib.contextmanager
def _ctrl_c_stops_jobs() -> Iterator[None]:
    """Ctrl-C stops the running jobs from the signal handler itself, then raises KeyboardInterrupt as before.
    That KeyboardInterrupt did not always reach the flow (twice, on a loaded machine: once in CI, once here; the
    job and the flow ran on to their end): now the jobs stop anyway, and the scheduler, woken by their end,
    sees the flag and stops the flow."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not callable(previous):  # not the main thread, or Ctrl-C ignored (`nohup`): as it was
        yield
        return

    def stop(signum: int, frame) -> None:
        progress.interrupt()
        previous(signum, frame)
        raise KeyboardInterrupt  # where the previous handler did not

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _second_sigterm_kills() -> None:
    """Once a flow is stopping, a second SIGTERM kills the command at once, as the CLI's own handler has it:
    Prefect's handler, still installed, raised it into the teardown (stopping the workers, closing the runs).
    Prefect puts its predecessor back when the flow's scope ends."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@flow(name="sublim", log_prints=True, flow_run_name=_pipeline_run_name)
def sublim_pipeline(pipeline: str = "mlp", params: str = config.PARAMS_FILE, workers: int | None = None) -> dict:
    """Run every job of `pipeline` in dependency order; summarise what finished and what did not.
    `workers` overrides params.yaml's parallel jobs (its task runner must be the one `build` was given)."""
    root = Path(params).resolve().parent
    cfg = config.load(params).with_workers(workers)
    jobs = plan(cfg, pipeline)
    track = tracker(cfg, pipeline, root)
    parent = track.open_pipeline_run(driver="prefect", name=f"prefect-{flow_run.get_name()}",
                                     config=cfg.model_dump(mode="json"))
    with _killed_on_interrupt(track, parent), workspace_lock(root, cfg.runtime.lock_timeout_s):
        dvc = DvcSync(root, Path(params))
        code.write_manifests(code.pipeline_jobs(cfg, PLANNERS), root)  # the `code` stage's output
        dvc.commit([code.MANIFESTS])
        try:
            finished = execute(jobs, cfg, root, parent, dvc, params)
            dvc.finish()
            _lineage_picture(track, parent, root / "reports" / "lineage" / pipeline, pipeline)  # while DVC commits
        except BaseException:  # interrupted: what finished is in dvc.lock before the command ends
            with contextlib.suppress(Exception):
                dvc.close()
            raise
        committed = dvc.close()
    missing = sorted(j.id for j in jobs.jobs if j.id not in finished)
    track.close_pipeline_run(parent, "FINISHED" if not missing else "FAILED")
    summary = _report(pipeline, _headed(pipeline, cfg, _summary_of(jobs, finished)), missing)
    return final({"summary": summary, "outcomes": finished, "missing": missing, "dvc_committed": committed,
                   "dvc_skipped": dvc.skipped})


@flow(name="sublim-sweep", log_prints=True, flow_run_name=_sweep_run_name)
def sublim_sweep(name: str, grid: dict[str, list], pipeline: str = "lm", params: str = config.PARAMS_FILE,
                 workers: int | None = None) -> dict:
    """The pipeline at every point of `grid` (dotted params key -> values) as one DAG, then one table of effects.

    Jobs shared by all points (bases, control teachers and their students) run once. Invalid points and
    points that did not finish are listed in the table rather than failing the whole sweep.
    """
    root = Path(params).resolve().parent
    cfg = config.load(params).with_workers(workers)
    swept = sweep.build(name, pipeline, config.read_raw(params) or {}, grid)
    track = tracker(cfg, pipeline, root)
    parent = track.open_pipeline_run(driver="prefect", name=f"prefect-{flow_run.get_name()}",
                                     config={"sweep": name, "grid": grid, **cfg.model_dump(mode="json")})
    # sweeps/ is outside dvc.yaml: `dvc add` to version it
    with _killed_on_interrupt(track, parent), workspace_lock(root, cfg.runtime.lock_timeout_s):
        finished = execute(swept.plan, cfg, root, parent, None, params)
        table = sweep.table_job(swept, {o.output for o in finished.values()})
        with workers_report_here(cfg.runtime):
            outcome = run.with_options(**result_storage(root)).submit(
                table, str(root), cfg.runtime.threads_for(pipeline), parent, list(finished.values()), params).result()
    missing = sorted(j.id for j in swept.plan.jobs if j.id not in finished)
    track.close_pipeline_run(parent, "FINISHED" if not missing and not swept.invalid else "FAILED")
    summary = _report(f"sweep-{_key(name)}", outcome.summary_markdown, missing)
    return final({"summary": summary, "outcomes": {**finished, table.id: outcome}, "missing": missing,
                   "invalid": swept.invalid, "table": str(table.output)})


def final(result: dict) -> dict | State:
    """The flow's result; a Failed state carrying it when jobs did not finish (or sweep points were invalid), so
    the Prefect UI, automations and a deployment's run history show the failure, not "Completed"."""
    problems = []
    if result["missing"]:
        problems.append(f"{len(result['missing'])} jobs did not finish: {', '.join(result['missing'])}")
    if result.get("invalid"):
        problems.append(f"{len(result['invalid'])} invalid points: {', '.join(result['invalid'])}")
    return Failed(message="; ".join(problems), data=result) if problems else result


def outcome_of(state: State) -> dict:
    """A pipeline or sweep flow's result dict, from its final state (`flow(..., return_state=True)`), failed or
    not; a flow that crashed (no result dict) raises its error."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


def run_flow(which, cfg: config.Config, **parameters) -> dict:
    """Run a pipeline (or sweep) flow with the task runner `cfg` asks for; its result dict even when jobs failed."""
    with temporary_unless_configured(), progress.one_command():  # the task runner has waited for its jobs
        return outcome_of(build(cfg, which)(**parameters, return_state=True))


def _key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def build(cfg: config.Config, which=sublim_pipeline):
    """A flow with the task runner params.yaml asks for."""
    return which.with_options(task_runner=task_runner(cfg.runtime))
