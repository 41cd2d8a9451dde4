"""Jobs and steps: the vocabulary both drivers (Prefect and DVC) share.

A *step* is a plain function registered by name ("mlp.teacher"). A *job* is one invocation of a step: a
seed, a generation, a variant, named input artifacts and one output artifact. `sublim.plan` turns params into
jobs; `sublim.runner.run_job` runs one job the same way whichever driver asked.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from sublim.backends import Progress


class Role(StrEnum):
    """What an input artifact is to the job that reads it (also how lineage reads the edge)."""

    INIT = "init"  # the model whose weights this one starts from
    TEACHER = "teacher"  # the model that generated the data, or whose distributions a student distils
    DATA = "data"  # a dataset trained on, or a labelled dataset (MLP digits), or screened
    CONTROL = "control"  # a matched control dataset (a screen's probe compares against it)
    SOURCE = "source"  # a dataset a filter reads
    MODEL = "model"  # a model an evaluation measures
    QUESTIONS = "questions"  # an evaluation set
    DIMS = "dims"  # read for its shape only
    EVAL = "eval"  # an evaluation's metrics, summarised
    POINT = "point"  # a sweep point's summary, tabulated


@dataclass(frozen=True)
class Job:
    """One step invocation. Paths are relative to the project root."""

    pipeline: str  # "mlp" | "lm"
    step: str  # "teacher"
    params: BaseModel  # the resolved params this step reads (a pydantic section)
    output: Path  # the artifact directory this job writes
    inputs: tuple[tuple[Role, Path], ...] = ()  # (role, artifact dir)
    seed: int | None = None
    gen: int | None = None
    variant: str | None = None
    files: tuple[tuple[str, Path], ...] = ()  # files inside the artifact also published elsewhere (DVC metrics)
    tags: tuple[tuple[str, str], ...] = ()  # lineage facts known from the plan (role, init, line, trait)
    point: str | None = None  # the sweep point this job belongs to (None outside sweeps)
    fn: str | None = None  # the registered step it runs, when not "<pipeline>.<step>" (the matrix runs lm steps)

    @property
    def step_name(self) -> str:
        return self.fn or f"{self.pipeline}.{self.step}"

    @property
    def id(self) -> str:
        """Stable, human-readable: `mlp.student@s0.g1.other` (plus `#<point>` inside a sweep)."""
        return f"{self.local_id}#{self.point}" if self.point else self.local_id

    @property
    def local_id(self) -> str:
        parts = [f"s{self.seed}" if self.seed is not None else None, f"g{self.gen}" if self.gen is not None else None]
        parts.append(self.variant)
        suffix = ".".join(p for p in parts if p)
        name = f"{self.pipeline}.{self.step}"
        return f"{name}@{suffix}" if suffix else name

    @property
    def rng_seed(self) -> int:
        """Seed for this job's randomness, derived from its identity (not its sweep point): reruns repeat,
        siblings differ, and a sweep point draws exactly what the same pipeline run alone draws."""
        return int.from_bytes(hashlib.sha256(self.local_id.encode()).digest()[:4], "big")

    def input(self, role: Role) -> Path:
        for key, path in self.inputs:
            if key == role:
                return path
        raise KeyError(f"{self.id} has no {role} input")

    def inputs_named(self, role: Role) -> list[Path]:
        return [path for key, path in self.inputs if key == role]

    @property
    def tag_dict(self) -> dict[str, str]:
        return dict(self.tags)


@dataclass
class ModelMetric:
    """A measurement of one model (by artifact path) on one evaluation dataset (by input name)."""

    model: Path
    key: str
    value: float
    dataset: str | None = None  # the job input the measurement was made on


@dataclass
class StepResult:
    """What a step hands back: the artifact kind, lineage facts it learned, and its measurements."""

    kind: str  # "model" | "dataset" | "metrics"
    metrics: dict[str, float] = field(default_factory=dict)  # run-level metrics
    model_metrics: list[ModelMetric] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)  # extra facts for the artifact's metadata
    figures: list[str] = field(default_factory=list)  # files inside the artifact to show in MLflow/Prefect
    summary_markdown: str | None = None  # a table for the Prefect artifact / terminal


class TrainingDiverged(ValueError):
    """Training left a model's loss (so its weights) NaN or infinite: the job `job_id`'s, where known (a batch
    that raises it names the one job to fail; the others are sound)."""

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(message)
        self.job_id = job_id

    def __reduce__(self):  # (Prefect's process workers pickle a task's exception)
        return type(self), (str(self), self.job_id)


def trained(loss: float, job_id: str, lr_key: str, lr: float) -> float:
    """The final loss, if finite: a diverged model is garbage, so its job fails, naming the setting to change,
    instead of publishing it (and a NaN loss would not even say which model)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"{job_id}: training diverged (final loss {loss}) at {lr_key} = {lr:g}; "
                               f"lower {lr_key} in params.yaml", job_id)
    return loss


@dataclass(frozen=True)
class StepContext:
    """What a running step may touch: its job, inputs (absolute paths) and a temp output directory."""

    job: Job
    root: Path
    out: Path
    progress: Progress
    digests: dict[str, str] = field(default_factory=dict)  # input path (relative) -> its digest
    lanes: int = 1  # independent parts of a batch that may compute at once (`side_by_side`)

    def digest(self, role: Role) -> str:
        return self.digests[str(self.job.input(role))]

    def path(self, role: Role) -> Path:
        return self.root / self.job.input(role)

    def paths(self, role: Role) -> list[Path]:
        return [self.root / p for p in self.job.inputs_named(role)]

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.job.rng_seed)


class _Stopped(Exception):
    """A lane stopped at its next step because another lane failed."""


def side_by_side(work: Callable[[list[int], Progress], None], parts: Sequence[list[int]], lanes: int,
                 progress: Progress) -> None:
    """`work(part, progress)` for every part, `lanes` parts at a time, each in a thread with the caller's torch
    thread count: one stack of small models is a chain of small ops that leaves cores idle, and two run side
    by side in about the time of one (10 MLP students, 1 thread each: 2.6 s in two lanes, 5.4 s in one). A
    part's bytes do not depend on its lane. The first failure (or an interrupt) stops every other lane at its
    next step and is raised; parts not yet begun are not begun."""
    if lanes <= 1 or len(parts) <= 1:
        for part in parts:
            work(part, progress)
        return
    stop = threading.Event()

    def watched(items, total: int, desc: str):
        for item in progress(items, total, desc):
            if stop.is_set():
                raise _Stopped
            yield item

    def lane(part: list[int]) -> None:
        if stop.is_set():
            raise _Stopped
        try:
            work(part, watched)
        except BaseException:
            stop.set()
            raise

    threads = torch.get_num_threads()  # a new thread would start with torch's default (every core)
    with ThreadPoolExecutor(min(lanes, len(parts)), thread_name_prefix="sublim-lane",
                            initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(lane, part) for part in parts]
        try:
            errors = [f.exception() for f in futures]
        except BaseException:  # interrupted while waiting: the lanes stop at their next step
            stop.set()
            raise
    raised = [e for e in errors if e is not None and not isinstance(e, _Stopped)]
    if raised:
        raise raised[0]


StepFn = Callable[[StepContext], StepResult]
BatchFn = Callable[[list[StepContext]], list[StepResult]]


@dataclass(frozen=True)
class Step:
    name: str
    fn: StepFn
    module: str  # where it is defined: its code dependencies are derived from there (sublim.code)
    batch: BatchFn | None = None  # runs many jobs of this step at once (seeds as a batch dimension)

    def run(self, contexts: list[StepContext]) -> list[StepResult]:
        """Every job of `contexts` (one job through `fn`, unless the step computes batches)."""
        if self.batch is not None:
            results = self.batch(contexts)
            if len(results) != len(contexts):
                raise RuntimeError(f"{self.name}: batch returned {len(results)} results for {len(contexts)} jobs")
            return results
        return [self.fn(ctx) for ctx in contexts]


STEPS: dict[str, Step] = {}


def step(name: str, *, batch: bool = False) -> Callable:
    """Register a step under `name` (e.g. "lm.teacher"). With `batch=True` the function takes a list of
    contexts (jobs of this step that differ only in seed, variant and inputs) and returns their results in
    order; each job still gets its own artifact, digest and lineage, and a job's bytes must not depend on
    its batch (no shared randomness, nothing reduced across jobs)."""

    def register(fn):
        single = (lambda ctx: fn([ctx])[0]) if batch else fn
        STEPS[name] = Step(name=name, fn=single, module=fn.__module__, batch=fn if batch else None)
        return fn

    return register


def get_step(name: str) -> Step:
    if name not in STEPS:
        import importlib
        import pkgutil

        import sublim.steps

        for mod in pkgutil.iter_modules(sublim.steps.__path__):  # each registers its steps
            importlib.import_module(f"sublim.steps.{mod.name}")
    if name not in STEPS:
        raise KeyError(f"unknown step {name!r}; known: {', '.join(sorted(STEPS))}")
    return STEPS[name]


def seed_everything(seed: int, threads: int) -> None:
    """Same seed and thread count -> same floats on CPU (the digest tests depend on it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # The public torch.use_deterministic_algorithms also imports the inductor compiler (1.5 s per process,
    # paid by every DVC stage); the switch itself is this one call.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    setter(True) if setter else torch.use_deterministic_algorithms(True)
