"""Seeds as a batch dimension: a seed's artifacts are bitwise the same whether its jobs ran alone (a DVC stage,
a batch of one) or beside 99 other seeds' jobs in one batch (the Prefect flow), at the default widths, and
whether a batch's stacks ran one after another or side by side in lanes."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch

from sublim import config
from sublim.plan import plan
from sublim.runner import run_job, run_jobs
from tests.conftest import make_project

SEEDS = list(range(100))
WATCHED = 37
# The default architecture (64-256-256-(10+3)) so the real kernel shapes are exercised; few steps keep it fast.
SMALL_WORK = {"seeds": SEEDS, "teacher": {"epochs": 1, "batch_size": 256}, "transfer": {"n_inputs": 256},
              "student": {"epochs": 1, "batch_size": 64}}


def _by_step(jobs):
    """Jobs in plan order, grouped into one batch per step and params (what the flow submits)."""
    key = lambda j: (j.step_name, j.params.model_dump_json())  # noqa: E731
    order = list(dict.fromkeys(key(j) for j in jobs))
    groups = {k: [j for j in jobs if key(j) == k] for k in order}
    return list(groups.values())


@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: `make test-slow`
def test_a_seed_is_bitwise_the_same_alone_or_beside_99_others(tmp_path, threads):
    """The batch runs in three lanes (uneven stacks side by side); the seed alone in one."""
    alone_root = make_project(tmp_path / "alone", {"mlp": {**SMALL_WORK, "seeds": [WATCHED]}}, git=False)
    alone_plan = plan(config.load(alone_root / "params.yaml"), "mlp")
    alone = {j.id: run_job(j, root=alone_root, tracker=None, threads=threads).digest
             for j in alone_plan.jobs if j.step not in ("summary",)}

    many_root = make_project(tmp_path / "many", {"mlp": SMALL_WORK}, git=False)
    jobs = [j for j in plan(config.load(many_root / "params.yaml"), "mlp").jobs if j.step != "summary"]
    batched = {}
    for group in _by_step(jobs):
        batched.update({o.job_id: (o.digest, o.batch) for o in run_jobs(group, root=many_root, tracker=None,
                                                                          threads=threads, lanes=3)})
    mine = {job_id: batched[job_id] for job_id in alone}
    assert {k: d for k, (d, _) in mine.items()} == alone
    sizes = {k.split("@")[0]: n for k, (_, n) in mine.items()}
    assert sizes == {"mlp.data": 1, "mlp.base": 100, "mlp.teacher": 100, "mlp.transfer": 100, "mlp.student": 200,
                     "mlp.evaluate": 100}
    # (bases: one batch per init, whose name is part of their params)
    # and the seeds really differ from each other (no accidental sharing of randomness across the batch)
    students = [batched[f"mlp.student@s{s}.g1.shared"][0] for s in SEEDS]
    assert len(set(students)) == len(SEEDS)


def test_a_batch_refuses_mixed_steps_or_params(tmp_path):
    root = make_project(tmp_path / "p", {"mlp": {**SMALL_WORK, "seeds": [0, 1]}}, git=False)
    jobs = plan(config.load(root / "params.yaml"), "mlp").jobs
    base, teacher = (next(j for j in jobs if j.step == s) for s in ("base", "teacher"))
    with pytest.raises(ValueError, match="one step per call"):
        run_jobs([base, teacher], root=root, tracker=None)
    bases = [j for j in jobs if j.step == "base"]
    other = bases[1].params.model_copy(update={"init": "elsewhere"})
    with pytest.raises(ValueError, match="share their params"):
        run_jobs([bases[0], type(bases[1])(**{**bases[1].__dict__, "params": other})], root=root, tracker=None)
    assert not any(itertools.islice((root / "models").rglob("*"), 1)) if (root / "models").exists() else True


def test_big_batches_train_as_stacks_that_fit_the_cache():
    from sublim.backends import mlp

    arch = mlp.Arch(64, (256, 256), 3)
    cut = mlp.stacks(list(range(200)), arch, rows=1024)  # the paper's student batch: 1 MB of activation a model
    assert [len(s) for s in cut] == [8] * 25 and [i for s in cut for i in s] == list(range(200))
    assert mlp.stacks([3, 5], arch, rows=1 << 20) == [[3], [5]]  # never an empty stack
    # the small-work test above cuts its 200 students (batch 64) and 100 transfers (256 inputs) into several stacks
    assert len(mlp.stacks(list(range(200)), arch, rows=64)) == 2
    assert len(mlp.stacks(list(range(100)), arch, rows=256)) == 4
    # lanes: at least that many stacks where there are models enough, never more than the models
    assert [len(s) for s in mlp.stacks(list(range(5)), arch, rows=64, parts=2)] == [3, 2]
    assert [len(s) for s in mlp.stacks(list(range(200)), arch, rows=1024, parts=2)] == [8] * 25
    assert mlp.stacks([7], arch, rows=64, parts=4) == [[7]]


def test_a_batch_is_cut_by_architecture_and_key_in_first_seen_order():
    from sublim.backends import mlp

    a, b = mlp.Arch(64, (256, 256), 3), mlp.Arch(64, (32,), 3)
    archs, data = [a, b, a, a, b, a], ["x", "x", "y", "x", "x", "x"]
    assert mlp.cut(archs, rows=64) == [[0, 2, 3, 5], [1, 4]]  # one stack per architecture...
    assert mlp.cut(archs, rows=64, by=lambda i: data[i]) == [[0, 3, 5], [1, 4], [2]]  # ...and per key
    assert mlp.cut(archs, rows=64, parts=2) == [[0, 2], [3, 5], [1], [4]]  # each group cut for the lanes
    assert mlp.cut([a] * 3, rows=64, by=lambda i: i) == [[0], [1], [2]]


def test_workers_of_a_pipeline_of_batches_are_lanes_of_one_process():
    """`--workers 2` split the MLP batches over two processes that each imported torch, MLflow and Prefect (flow
    38 s; one process with two lanes: 27 s); a pipeline with jobs that are not batches keeps its processes."""
    from sublim.config import Runtime, parse
    from sublim.orchestrate import workers_for
    from sublim.plan import plan

    cfg = parse({"mlp": {"seeds": [0, 1]}})
    process, dask = Runtime().with_workers(2), Runtime(task_runner="dask").with_workers(2)
    assert workers_for(plan(cfg, "mlp"), 2, process) == 1  # every step with many jobs is a batch step
    assert workers_for(plan(cfg, "lm"), 2, process) == 2  # lm bases, teachers, students: one job at a time
    assert workers_for(plan(cfg, "mlp"), 2, dask) == 2  # a cluster's workers are its own
    assert workers_for(plan(cfg, "mlp"), None, process) is None and workers_for(plan(cfg, "mlp"), 1, process) == 1


def test_the_more_workers_than_cores_note_speaks_of_the_processes_that_run(monkeypatch):
    """`sublim flow mlp --workers 4` on 2 cores runs one process, so it says nothing of oversubscription; an lm flow
    would start 4 processes, and says so."""
    import io

    from rich.console import Console

    from sublim import cli
    from sublim.config import parse
    from sublim.plan import plan

    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    cfg = parse({"mlp": {"seeds": [0, 1]}}).with_workers(4)

    def said(plan_, workers):
        monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=200))
        processes = cli._processes(plan_, workers, cfg)
        return processes, cli.console.file.getvalue()

    assert said(plan(cfg, "mlp"), 4) == (1, "")
    processes, note = said(plan(cfg, "lm"), 4)
    assert processes == 4 and "--workers 4: this machine has 2 cores" in note


def test_lanes_are_the_cores_the_flows_workers_leave_idle(monkeypatch):
    import os

    from sublim.config import Runtime
    from sublim.orchestrate import lanes_for

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert lanes_for(Runtime(), "mlp") == 8  # params.yaml's default: one worker of one thread
    assert lanes_for(Runtime(task_runner="process", max_workers=2, threads={"mlp": 2, "lm": 1}), "mlp") == 2
    assert lanes_for(Runtime(task_runner="process", max_workers=16), "mlp") == 1  # never none
    assert lanes_for(Runtime(task_runner="dask"), "mlp") == 1  # a Dask worker's machine is not known here


def test_lanes_compute_with_the_callers_torch_threads_and_all_parts():
    from sublim.backends import quiet
    from sublim.job import side_by_side

    seen: dict[int, tuple[str, int]] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        side_by_side(lambda part, progress: seen.update(
            {i: (threading.current_thread().name, torch.get_num_threads()) for i in progress(part, len(part), "x")}),
            [[0, 1], [2], [3, 4]], 2, quiet)
    finally:
        torch.set_num_threads(before)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert {n for _, n in seen.values()} == {1}  # a new thread would have had torch's default (every core)
    assert all(name.startswith("sublim-lane") for name, _ in seen.values())


def test_a_failing_lane_stops_the_others_at_their_next_step_and_its_error_is_raised():
    from sublim.backends import quiet
    from sublim.job import side_by_side

    steps = {"long": 0}
    started = threading.Event()

    def work(part, progress):
        if part == ["bad"]:
            started.wait(10)
            raise ValueError("lane bad diverged")
        for _ in progress(range(10_000), 10_000, "long"):
            started.set()
            steps["long"] += 1
            time.sleep(0.001)

    with pytest.raises(ValueError, match="lane bad diverged"):
        side_by_side(work, [["long"], ["bad"], ["never"]], 2, quiet)
    assert 0 < steps["long"] < 10_000  # stopped early, not run to its end
