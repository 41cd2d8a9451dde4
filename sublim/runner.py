"""run_job: the one path every driver takes to run a step.

check inputs -> seed -> open the job's MLflow run -> run the step into a temp dir -> write metadata ->
atomic rename -> digest -> record lineage -> close the run (FINISHED, or FAILED on any error).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sublim.artifacts import (ArtifactError, ArtifactMeta, Replaced, atomic_dir, digest, inside, read_meta, verify,
                              write_meta)
from sublim.job import Job, Role, StepContext, StepResult, TrainingDiverged, get_step, seed_everything
from sublim.lineage.record import Input, Tracker, artifact_id, artifact_identity, parents_of

log = logging.getLogger("sublim")


@dataclass(frozen=True)
class Outcome:
    """What a finished job reports: small and serialisable (Prefect persists it as the cached result)."""

    job_id: str
    output: str
    digest: str
    kind: str
    metrics: dict[str, float] = field(default_factory=dict)
    model_id: str | None = None
    run_id: str | None = None
    summary_markdown: str | None = None
    figures: tuple[str, ...] = ()
    seconds: float = 0.0  # wall time of the computation (of its whole batch)
    batch: int = 1  # how many jobs were computed together


def quiet(items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    yield from items


def check_inputs(job: Job, root: Path) -> list[Input]:
    """Every input exists and is a sublim artifact; errors name the file, before any compute."""
    found = []
    for name, rel in job.inputs:
        path = inside(root, rel)
        if not path.exists():
            raise ArtifactError(f"{rel}: input '{name}' of {job.id} is missing (run the step that produces it first)")
        meta = read_meta(path)
        verify(path)
        found.append(Input(name, rel, digest(path), meta, artifact_id(path, root, meta)))
    return found


def derive_lineage(job: Job, inputs: list[Input], result: StepResult, backend: str) -> dict[str, Any]:
    """Lineage facts for the artifact's sublim.json, from what was recorded in the inputs, never from names.

    init_from: the DVC md5 of the model whose weights this one started from. data_from: the teachers whose
    generated data reached this artifact (a generate step's teacher, or whatever its datasets descend from).
    The lineage graph itself (content identities, edges by input role) is recorded by the Tracker.
    """
    data = [i for i in inputs if i.name in (Role.DATA, Role.SOURCE) and i.meta.kind == "dataset"]
    teachers = [i.digest for i in inputs if i.name == Role.TEACHER]
    inherited = [d for i in data for d in str(i.meta.lineage.get("data_from", "")).split(",") if d]
    init = [i for i in inputs if i.name == Role.INIT]
    facts: dict[str, Any] = {
        "pipeline": job.pipeline,
        "backend": backend,
        "seed": job.seed,
        "generation": job.gen,
        **job.tag_dict,
        "init_from": init[0].digest if init else None,
        "data_from": ",".join(dict.fromkeys(teachers + inherited)) or None,
        "data_digest": ",".join(i.digest for i in data if i.name == Role.DATA) or None,
        **result.lineage,
    }
    return {k: v for k, v in facts.items() if v is not None}


def run_job(
    job: Job,
    *,
    root: Path,
    tracker: Tracker | None,
    threads: int = 1,
    parent_run_id: str | None = None,
    driver: str = "cli",
    progress=quiet,
    key: str | None = None,
) -> Outcome:
    """One job: a batch of one (what each DVC stage runs)."""
    return run_jobs([job], root=root, tracker=tracker, threads=threads, parent_run_id=parent_run_id, driver=driver,
                    progress=progress, keys=[key] if key else None)[0]


def run_jobs(
    jobs: list[Job],
    *,
    root: Path,
    tracker: Tracker | None,
    threads: int = 1,
    parent_run_id: str | None = None,
    driver: str = "cli",
    progress=quiet,
    keys: list[str] | None = None,
    lanes: int = 1,
) -> list[Outcome]:
    """Jobs of one step computed together (a batchable step computes them as one batch), each with its own
    checked inputs, MLflow run, atomic artifact, digest and lineage record, exactly as it gets alone.
    `keys`: the jobs' cache keys (`orchestrate.job_cache_key`); each run is tagged with its key and outcome, so a
    flow can take up what another driver made (`Tracker.recorded_outcome`). `lanes`: parts of the batch that may
    compute at once, in threads of `threads` torch threads each (`job.side_by_side`; no byte depends on it).

    All or nothing: if the step raises, every job's run is marked FAILED and no artifact is published."""
    if not jobs:
        return []
    root = Path(root).resolve()
    steps = {job.step_name for job in jobs}
    if len(steps) != 1:
        raise ValueError(f"run_jobs: one step per call, got {', '.join(sorted(steps))}")
    step = get_step(jobs[0].step_name)
    if len({json.dumps(job.params.model_dump(mode="json"), sort_keys=True) for job in jobs}) != 1:
        raise ValueError(f"run_jobs: jobs of one batch share their params ({', '.join(j.id for j in jobs)})")
    for job in jobs:
        for dest in (job.output, *(d for _, d in job.files)):
            inside(root, dest)  # nothing is written outside the project
    inputs = [check_inputs(job, root) for job in jobs]
    seed_everything(jobs[0].rng_seed, threads)  # a batch step draws from its jobs' own generators only
    params = [job.params.model_dump(mode="json") for job in jobs]
    run_ids: list[str | None] = [None] * len(jobs)
    aside: list[Replaced] = []  # published outputs whose jobs are not recorded yet, with what they replaced
    started = time.perf_counter()
    with tracker.batch([job.id for job in jobs]) if tracker else contextlib.nullcontext():
        try:
            if tracker:
                for i, job in enumerate(jobs):
                    tags = {k: str(v) for k, v in job.tags} | ({"cache_key": keys[i]} if keys else {})
                    run_ids[i] = tracker.start_job(job.id, job.step_name, parent_run_id=parent_run_id, driver=driver,
                                                   params=params[i], tags=tags)
            with contextlib.ExitStack() as stack:
                tmps = [stack.enter_context(atomic_dir(root / job.output, aside)) for job in jobs]
                contexts = [StepContext(job=job, root=root, out=tmp, progress=progress, lanes=lanes,
                                        digests={str(i.path): i.digest for i in ins})
                            for job, tmp, ins in zip(jobs, tmps, inputs)]
                results = step.run(contexts)
                written = [_describe(job, ins, result, tmp, p)
                           for job, ins, result, tmp, p in zip(jobs, inputs, results, tmps, params)]
            seconds = time.perf_counter() - started
            outcomes = []
            for i, (job, ins, result, (meta, identity)) in enumerate(zip(jobs, inputs, results, written)):
                _publish(job, root)
                out = Input("output", job.output, digest(root / job.output), meta, identity.id if identity else None)
                outcome = Outcome(job.id, str(job.output), out.digest, result.kind, result.metrics, None, run_ids[i],
                                  result.summary_markdown, tuple(str(job.output / f) for f in result.figures),
                                  round(seconds, 3), len(jobs))
                if tracker:
                    outcome = replace(outcome, model_id=_record(tracker, outcome, job, ins, out, identity, result, root))
                run_ids[i] = None  # recorded and closed: not to be failed
                kept = next(r for r in aside if r.dest == root / job.output)
                aside.remove(kept)
                kept.keep()
                log.info("%s -> %s (%s)", job.id, job.output, out.digest)
                outcomes.append(outcome)
            return outcomes
        except BaseException as exc:
            _put_back(aside, jobs, root)  # a job that failed after publishing leaves what was there before
            if tracker:
                diverged = exc.job_id if isinstance(exc, TrainingDiverged) else None
                for job, run_id in zip(jobs, run_ids):
                    if run_id:  # a diverged job's sound siblings run again without it: stopped, not failed
                        tracker.fail_job(run_id, exc, stopped_by=diverged if diverged != job.id else None)
            raise


def _put_back(aside: list[Replaced], jobs: list[Job], root: Path) -> None:
    """Undo the publication of every job not recorded: its old output, and the files copied out of it, are
    back (a job that had none leaves none), so a failed job never stands in place of a good one."""
    by_output = {root / job.output: job for job in jobs}
    for r in aside:
        r.undo()
        if r.old is not None:
            _publish(by_output[r.dest], root)


def _describe(job: Job, inputs: list[Input], result: StepResult, tmp: Path, params: dict[str, Any]):
    """Write a finished job's sublim.json into its temp dir; return it with the artifact's content identity."""
    backend = result.lineage.pop("backend", job.pipeline)
    identity = artifact_identity(tmp, result.kind, parents_of(inputs))  # content only: before sublim.json
    lineage = derive_lineage(job, inputs, result, backend)
    meta = ArtifactMeta(
        kind=result.kind, job=job.id, step=job.step_name, params=params,
        parents={f"{i.name}:{i.path}": i.digest for i in inputs},
        lineage={**lineage, "id": identity.id} if identity else lineage,
    )
    write_meta(tmp, meta)
    return meta, identity


def _record(tracker: Tracker, outcome: Outcome, job: Job, inputs: list[Input], out: Input, identity,
            result: StepResult, root: Path) -> str | None:
    ids = {str(i.path): i.id for i in inputs}
    model_metrics = [(ids.get(str(m.model)) or artifact_id(root / m.model, root), m.key, m.value, m.dataset)
                     for m in result.model_metrics]
    return tracker.finish_job(outcome.run_id, step=job.step_name, inputs=inputs, output=out, identity=identity,
                              metrics=result.metrics, model_metrics=model_metrics,
                              figures=[root / job.output / f for f in result.figures], outcome=asdict(outcome))


def _publish(job: Job, root: Path) -> None:
    """Copy named files out of the finished artifact (e.g. DVC metrics files), each atomically."""
    for name, dest in job.files:
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(root / job.output / name, tmp)
        os.replace(tmp, target)
