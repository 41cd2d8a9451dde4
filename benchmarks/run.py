"""`make bench`: speed figures written to benchmarks/results.json (never asserted in tests).

Sections (all by default; `--only` picks some, e.g. to leave out the long `matrix` and `mlp_100_seeds`):

- demo: `sublim flow all --workers N` as `make demo` runs it (N: the cores, at most 4), with jobs per pipeline
  and where the time went, and whether every output equals the repository's committed dvc.lock; then the same
  at the workload the 4-minute target was set on (one seed's lm bases pretrained, as then, not every seed's);
- demo_one_worker: the same one job at a time (params.yaml's runtime), and whether its digests equal the demo's;
- demo_mlp: `sublim flow mlp` alone (the demo's MLP part), one worker and --workers N, median of the repeats;
- orchestration_overhead: the MLP pipeline through the Prefect flow (with MLflow tracking and DVC) vs the same
  jobs run bare, batched the way the flow batches them; repeated, with the ratio's spread;
- mlp_100_seeds: the MLP pipeline on 100 seeds through the flow, every model recorded in MLflow;
- matrix: `sublim flow matrix` at params.yaml defaults;
- screen_cost: seconds per 1,000 rows of each screen (divergence, kl, random, the model-level probe);
- lineage: `audit` of a deep, branching lineage in a store of 10,000 models (sqlite and an MLflow server);
- generation_throughput: the backend's batched sampler vs a plain `generate` loop;
- tinylm_stack: whether training the seeds' tinylm models as one vmapped stack would pay, as it does for the MLP;
- evaluation_cost: exact vs sampled trait evaluation at equal precision;
- dask_sweep: a 2-worker Dask sweep vs the sequential sweep;
- task_overhead: per-task scheduling cost of the task runners.

Each section runs in a fresh temporary project so caches cannot flatter the numbers. `--smoke` shrinks every
size (seeds, steps, rows) so each section can be checked end to end in seconds; its figures mean nothing and
go to a file of their own, never to benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# the same throwaway-project helper and tiny settings the tests use
from tests.conftest import TINY_LM, TINY_MLP, cli_env, deep_update, make_project  # noqa: E402

RESULTS = REPO / "benchmarks" / "results.json"
SMOKE_RESULTS = Path(tempfile.gettempdir()) / "sublim-bench-smoke.json"
HISTORY = 10  # earlier measurements kept per section in results.json


# --- sizes ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Every size a section uses: the real benchmark's, or a smoke run's (same code path, tiny numbers)."""

    smoke: bool = False
    repeats: int = 3  # runs of demo_mlp and tinylm_stack: median and spread (the long flows run once)
    pairs: int = 5  # bare/flow pairs of the overhead: single pairs ranged 1.05-1.18 on this machine's noise
    mlp: dict = field(default_factory=dict)  # mlp overrides of params.yaml (none: its 5-seed defaults)
    many_seeds: int = 100  # mlp_100_seeds
    demo: dict = field(default_factory=dict)  # params overrides for `sublim flow all`
    matrix: dict = field(default_factory=dict)  # params overrides for `sublim flow matrix`
    lm_model: dict = field(default_factory=dict)  # lm.model overrides (none: params.yaml's default tinylm)
    generation: tuple[int, int, int] = (1000, 250, 40)  # prompts, batch, new tokens
    stack: tuple[int, int, int] = (32, 64, 10)  # tinylm_stack: batch and length per model, timed steps per run
    eval_pretrain_steps: int = 300
    eval_samples: int = 20
    screen_prompts: int = 400  # the screened dataset: generated rows before filtering
    probe: dict = field(default_factory=dict)  # lm.screen.probe overrides (none: its defaults)
    lineage: tuple[int, int, int] = (10_000, 10, 12)  # models in the store, deep lineage width and depth
    sweep_lm: dict = field(default_factory=dict)
    tasks: int = 200


SWEEP_LM = {"seeds": [0, 1, 2, 3], "student_inits": ["shared"],
            "model": {"backend": "tinylm", "pretrain_steps": 300},
            "teacher": {"steps": 30}, "generate": {"n_prompts": 500}, "student": {"steps": 100},
            "evaluate": {"samples": 0}}
FULL = Scale(sweep_lm=SWEEP_LM)
SMALL_LM = deep_update(TINY_LM, {"seeds": [0], "student_inits": ["shared"]})
SMOKE = Scale(
    smoke=True, repeats=2, pairs=2, mlp=TINY_MLP, many_seeds=3,
    demo={"mlp": TINY_MLP, "lm": SMALL_LM},
    matrix={"lm": SMALL_LM, "matrix": {"targets": ["owl", "cat"], "seeds": [0], "student_inits": ["shared"]}},
    lm_model=TINY_LM["model"], generation=(64, 32, 8), stack=(4, 8, 2), eval_pretrain_steps=20, eval_samples=3, screen_prompts=48,
    probe={"seeds": 2, "rows": 16, "steps": 4, "batch_size": 8, "questions": 2},
    lineage=(300, 3, 10), sweep_lm={**SMALL_LM, "evaluate": {"samples": 0}}, tasks=20,
)


# --- small helpers -------------------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 2) -> dict:
    """Every run, and their median, min and max: one timing on a shared 2-core machine is not a figure."""
    return {"runs": [round(v, digits) for v in values], "median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its children: the finished ones (a DVC helper) and the live
    ones (the Prefect server), so the flow's bookkeeping counts wherever it runs."""
    import psutil

    me = psutil.Process()
    live = 0.0
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
            live += t.user + t.system
        except psutil.Error:  # gone meanwhile: then it is counted among the finished children
            pass
    t = me.cpu_times()
    return t.user + t.system + t.children_user + t.children_system + live


def _config(root: Path):
    from sublim import config

    return config.load(root / "params.yaml")


@functools.cache
def prefect_up() -> float:
    """Start this process's ephemeral Prefect server, once (the targets are stated "once the server is up");
    returns how long that took."""
    from prefect import flow

    @flow
    def warm() -> int:
        return 1

    t0 = time.perf_counter()
    warm()
    return time.perf_counter() - t0


def flow_run(root: Path, pipeline: str, workers: int | None = None) -> tuple[float, float, dict]:
    """One pipeline through the Prefect flow, in-process (`workers`: as `sublim flow --workers`): (seconds to
    create the MLflow store, flow seconds, the flow's outcomes by job id). The store is created first, outside
    the timing, as a server would be."""
    from flows.pipeline import run_flow, sublim_pipeline
    from sublim.orchestrate import workers_for
    from sublim.pipeline import tracker

    cfg = _config(root).with_workers(workers)
    workers = workers_for(_plan(root, pipeline), workers, cfg.runtime)  # as `sublim flow` takes --workers
    cfg = cfg.with_workers(workers)
    t0 = time.perf_counter()
    tracker(cfg, pipeline, root)
    store_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run_flow(sublim_pipeline, cfg, pipeline=pipeline, params=str(root / "params.yaml"), workers=workers)
    wall = time.perf_counter() - t0
    if result["missing"]:
        raise RuntimeError(f"{pipeline} flow did not finish {result['missing']}")
    return store_s, wall, result["outcomes"]


def compute_by_step(outcomes: dict, jobs) -> dict[str, float]:
    """Seconds of computation per step, from the flow's own outcomes (a batch's seconds split over its jobs)."""
    step_of = {job.id: job.step_name for job in jobs}
    out: dict[str, float] = {}
    for o in outcomes.values():
        step = step_of[o.job_id]
        out[step] = out.get(step, 0.0) + o.seconds / max(o.batch, 1)
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def cli(root: Path, *args: str) -> float:
    """`sublim ARGS` in `root` as a user runs it (own process, own Prefect server); its wall time. The project's
    own copy of the code runs (the code being benchmarked), not whichever checkout the venv installed."""
    t0 = time.perf_counter()
    env = {**cli_env(), "PYTHONPATH": str(root)}
    proc = subprocess.run(["sublim", *args], cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"sublim {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def _paged(search, *args, **kwargs) -> list:
    """Every result of an MLflow search, page by page."""
    out, token = [], None
    while True:
        page = search(*args, max_results=1000, page_token=token, **kwargs)
        out += list(page)
        token = page.token
        if not token:
            return out


def _busy(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals: a batch's runs all open before it computes and close after it."""
    total, end = 0.0, -float("inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
        elif stop > end:
            total += stop - end
        end = max(end, stop)
    return total


def tracked_times(root: Path) -> dict:
    """Where a CLI flow's time went, read back from the project's MLflow store: each pipeline run's duration,
    and per step the wall time its job runs were open (the union of their intervals) and their count."""
    from sublim.lineage.record import T, client, tracking_uri

    store = client(tracking_uri(root))
    experiments = {e.experiment_id: e.name for e in store.search_experiments()}
    ids = list(experiments)
    pipelines = {}
    for run in _paged(store.search_runs, ids, f"tags.`{T}kind` = 'pipeline'"):
        if run.info.end_time:
            name = experiments[run.info.experiment_id]
            pipelines[name] = round(pipelines.get(name, 0.0) + (run.info.end_time - run.info.start_time) / 1000, 1)
    steps: dict[str, list[tuple[float, float]]] = {}
    for run in _paged(store.search_runs, ids, f"tags.`{T}kind` = 'job'"):
        if run.info.end_time:
            steps.setdefault(run.data.tags.get(f"{T}step", "?"), []).append(
                (run.info.start_time / 1000, run.info.end_time / 1000))
    split = {s: {"jobs": len(v), "busy_s": round(_busy(v), 1)} for s, v in steps.items()}
    return {"flow_s_by_experiment": pipelines,
            "by_step": dict(sorted(split.items(), key=lambda kv: -kv[1]["busy_s"]))}


def _plan(root: Path, pipeline: str):
    from sublim.plan import plan

    return plan(_config(root), pipeline)


def jobs_of(root: Path, *pipelines: str) -> dict[str, int]:
    return {p: len(_plan(root, p).jobs) for p in pipelines}


# --- demo ----------------------------------------------------------------------------------------------------


def flow_cli(root: Path, pipeline: str, *options: str) -> dict:
    """`sublim flow PIPELINE` in `root`: the command's wall time, where it went (from MLflow), and what was left
    outside the flows (process and Prefect server start, checks before the flows)."""
    wall = cli(root, "flow", pipeline, *options)
    times = tracked_times(root)
    return {"wall_s": round(wall, 1), "outside_flows_s": round(wall - sum(times["flow_s_by_experiment"].values()), 1),
            "time_split": times}


SPLIT_NOTE = ("time_split: each pipeline flow's run from start to end, and per step the wall time its jobs' MLflow "
              "runs were open (a batch's runs overlap); outside_flows_s: process and Prefect server start, checks "
              "before the flows")


def demo_workers() -> int:
    """The Makefile's DEMO_WORKERS default: the machine's cores, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


def lock_digests(root: Path) -> dict[str, str]:
    """Every stage output's digest as the flow's DVC bookkeeping wrote it into dvc.lock."""
    import yaml

    lock = yaml.safe_load((root / "dvc.lock").read_text()) if (root / "dvc.lock").exists() else {}
    return {o["path"]: o.get("md5", "") for st in (lock or {}).get("stages", {}).values() for o in st.get("outs", [])}


_DEMO_DIGESTS: dict[str, str] = {}  # the demo's output digests, for demo_one_worker to compare against


def _compared(digests: dict[str, str], scale: Scale) -> dict:
    """A demo's outputs against the repository's committed dvc.lock (at full size the demo is the repository's
    own pipelines: every output must come out byte-identical) and against the other demo run of this bench."""
    committed = lock_digests(REPO) if not scale.demo else {}
    mine = {k: v for k, v in digests.items() if not k.startswith(".sublim/")}  # code manifests follow the code
    against_lock = sorted(k for k in mine if k in committed and committed[k] != mine[k])
    other = sorted(k for k in mine if _DEMO_DIGESTS and _DEMO_DIGESTS.get(k) != mine[k])
    return {"outputs": len(mine),
            "same_digests_as_committed_lock": (not against_lock) if committed else "smoke sizes: not the repo's",
            "outputs_in_committed_lock": sum(k in committed for k in mine), "differ_from_lock": against_lock,
            "same_digests_as_other_demo": (not other) if _DEMO_DIGESTS else "other demo not run yet in this bench",
            "differ_from_other_demo": other}


def _demo(tmp: Path, scale: Scale, folder: str, *options: str) -> dict:
    root = make_project(tmp / folder, scale.demo)
    ran = flow_cli(root, "all", *options)
    cfg = _config(root)
    bases = ran["time_split"]["by_step"].get("lm.base", {"jobs": 0, "busy_s": 0.0})
    digests = lock_digests(root)
    compared = _compared(digests, scale)
    _DEMO_DIGESTS.update(digests)
    return {"command": " ".join(["sublim flow all", *options]), **ran, "target_s": 240,
            "jobs": jobs_of(root, "mlp", "lm"), **compared,
            "note": (f"the workload grew since the 4-minute target was set: each lm seed now pretrains its own "
                     f"tinylm bases, one per student init ({len(cfg.lm.seeds)} seeds x {len(cfg.lm.student_inits)} = "
                     f"{bases['jobs']} lm.base jobs, {bases['busy_s']} s of the wall). {SPLIT_NOTE}")}


def at_issue_workload(tmp: Path, scale: Scale, done: Path, *options: str) -> dict:
    """The same command at the workload issue 12 set the 4-minute target on. Then the lm experiment pretrained
    one base per student init, shared by every seed; now each seed pretrains its own. A fresh project is given
    the bases of every seed but the first, with their flow cache records, from the demo run `done`, so its flow
    pretrains one seed's bases, as the issue's demo did, and finds the others finished. Everything else (MLP,
    teachers, data, students, evaluations, summaries, MLflow, DVC) runs as in the demo."""
    from sublim.orchestrate import job_cache_key, result_storage

    root = make_project(tmp / "demo_issue_workload", scale.demo)
    cfg, plan = _config(root), _plan(root, "lm")
    given = [j for j in plan.jobs if j.step_name == "lm.base" and j.seed != cfg.lm.seeds[0]]
    records = [result_storage(r)["result_storage"] for r in (done, root)]
    records[1].mkdir(parents=True, exist_ok=True)
    for job in given:
        assert not plan.upstream(job), f"{job.id}: a base with upstream jobs would need their results too"
        shutil.copytree(done / job.output, root / job.output)
        key = job_cache_key(job, {}, root, cfg.runtime.threads_for("lm"))
        shutil.copyfile(records[0] / key, records[1] / key)
    ran = flow_cli(root, "all", *options)
    digests = lock_digests(root)
    differ = sorted(k for k, v in digests.items() if not k.startswith(".sublim/") and _DEMO_DIGESTS.get(k) != v)
    bases = ran["time_split"]["by_step"].get("lm.base", {"jobs": 0, "busy_s": 0.0})
    return {"wall_s": ran["wall_s"], "meets_target": ran["wall_s"] <= 240, "outside_flows_s": ran["outside_flows_s"],
            "flow_s_by_experiment": ran["time_split"]["flow_s_by_experiment"],
            "lm_bases_pretrained": bases["jobs"], "lm_bases_busy_s": bases["busy_s"],
            "lm_bases_given": len(given), "same_digests_as_demo": not differ, "differ_from_demo": differ,
            "note": ("issue 12's demo pretrained one lm base per student init, shared by every seed; here one seed's "
                     "bases are pretrained and the other seeds' are given, built by the demo run above (their jobs "
                     "are skipped as finished, and are not recorded in this project's MLflow)")}


def demo(tmp: Path, scale: Scale) -> dict:
    """`sublim flow all --workers N` as `make demo` runs it (N: the cores, at most 4), in a fresh project; then
    the same at the workload of the issue that set its target (`at_issue_workload`)."""
    options = ("--workers", str(demo_workers()))
    ran = _demo(tmp, scale, "demo", *options)
    return {**ran, "at_issue_workload": at_issue_workload(tmp, scale, tmp / "demo", *options)}


def demo_one_worker(tmp: Path, scale: Scale) -> dict:
    """`sublim flow all` with params.yaml's runtime (one job at a time): the same jobs, the same digests."""
    return _demo(tmp, scale, "demo_one_worker")


def demo_mlp(tmp: Path, scale: Scale) -> dict:
    """`sublim flow mlp` alone, the demo's first half, with params.yaml's one worker and with one per core (as
    `make demo` runs it), alternating: the command's wall time (process and Prefect server start included) and
    the flow's own run (from MLflow), each over fresh projects."""
    options = {"one worker": (), "workers": ("--workers", str(demo_workers()))}
    walls: dict[str, list[float]] = {k: [] for k in options}
    flows: dict[str, list[float]] = {k: [] for k in options}
    for i in range(scale.repeats):
        for key, extra in options.items():
            root = make_project(tmp / f"mlp{i}-{len(extra)}", {"mlp": scale.mlp})
            ran = flow_cli(root, "mlp", *extra)
            walls[key].append(ran["wall_s"])
            flows[key].append(sum(ran["time_split"]["flow_s_by_experiment"].values()))
            jobs = jobs_of(root, "mlp")["mlp"]
            shutil.rmtree(root)
    best = min(options, key=lambda k: statistics.median(walls[k]))
    return {"command": "sublim flow mlp", "wall_s": spread(walls["one worker"], 1),
            "flow_s": spread(flows["one worker"], 1),
            "workers": demo_workers(), "wall_s_workers": spread(walls["workers"], 1),
            "flow_s_workers": spread(flows["workers"], 1), "target_s": 30,
            "meets_target": statistics.median(walls[best]) <= 30, "faster": best,
            "flow_meets_target": statistics.median(flows[best]) <= 30, "jobs": jobs,
            "time_split_last_run": ran["time_split"],
            "params": "params.yaml defaults" if not scale.mlp else scale.mlp}


# --- orchestration overhead ------------------------------------------------------------------------------------


def waves(plan) -> list[list[Any]]:
    """The plan's jobs by depth in its DAG (a job's wave: one more than its deepest upstream job's): the jobs the
    flow finds ready together."""
    depth: dict[str, int] = {}

    def of(job) -> int:
        if job.id not in depth:
            depth[job.id] = 1 + max((of(u) for u in plan.upstream(job)), default=-1)
        return depth[job.id]

    out: list[list[Any]] = []
    for job in plan.jobs:
        d = of(job)
        out += [[] for _ in range(d + 1 - len(out))]
        out[d].append(job)
    return out


def batches(plan) -> list[list[Any]]:
    """Jobs grouped as the flow's scheduler groups them: within a wave, jobs of a batchable step with the same
    params are one batch (one Step.run call); every other job runs alone."""
    from sublim.job import get_step

    out = []
    for wave in waves(plan):
        groups: dict[tuple[str, str], list[Any]] = {}
        for job in wave:
            if get_step(job.step_name).batch is None:
                out.append([job])
            else:
                groups.setdefault((job.step_name, job.params.model_dump_json()), []).append(job)
        out += list(groups.values())
    return out


def bare_run(root: Path) -> tuple[float, dict]:
    """The MLP jobs without Prefect, MLflow or DVC: each batch through the runner with tracking off, i.e. the step
    functions (Step.run, batched) plus what any driver writes (input checks, atomic output, the same sublim.json),
    in as many lanes as the flow gives a batch. Returns the seconds and the outcomes by job id."""
    from sublim.orchestrate import lanes_for
    from sublim.plan import plan
    from sublim.runner import run_jobs

    cfg = _config(root)
    groups = batches(plan(cfg, "mlp"))
    threads, parts = cfg.runtime.threads_for("mlp"), lanes_for(cfg.runtime, "mlp")
    t0 = time.perf_counter()
    outcomes = {o.job_id: o for group in groups
                for o in run_jobs(group, root=root, tracker=None, threads=threads, lanes=parts)}
    return time.perf_counter() - t0, outcomes


def overhead(tmp: Path, scale: Scale) -> dict:
    """Flow (Prefect + MLflow tracking + DVC commits) over bare, on the MLP pipeline: paired runs, each in fresh
    projects; the ratio of each pair, and of the medians. The bare run must produce the flow's exact artifacts
    (digests) in the flow's batches, or it would not be the same work."""
    from sublim.job import get_step

    startup = prefect_up()
    get_step("mlp.data")  # import every step module before any timing
    bare_s, flow_s, store_s, same_bytes, same_batches = [], [], [], True, True
    bare_cpu, flow_cpu = [], []
    for i in range(scale.pairs):
        root = make_project(tmp / f"bare{i}", {"mlp": scale.mlp}, git=False)
        cpu = cpu_seconds()
        seconds, bare_out = bare_run(root)
        bare_cpu.append(cpu_seconds() - cpu)
        bare_s.append(seconds)
        seeds = len(_config(root).mlp.seeds)
        shutil.rmtree(root)
        root = make_project(tmp / f"flow{i}", {"mlp": scale.mlp})
        cpu = cpu_seconds()
        store, seconds, flow_out = flow_run(root, "mlp")
        flow_cpu.append(cpu_seconds() - cpu)
        store_s.append(store)
        flow_s.append(seconds)
        same_bytes &= {k: o.digest for k, o in bare_out.items()} == {k: o.digest for k, o in flow_out.items()}
        same_batches &= {k: o.batch for k, o in bare_out.items()} == {k: o.batch for k, o in flow_out.items()}
        split = compute_by_step(flow_out, _plan(root, "mlp").jobs)
        shutil.rmtree(root)
    ratios = [f / b for f, b in zip(flow_s, bare_s)]
    with_store = [(f + s) / b for f, s, b in zip(flow_s, store_s, bare_s)]
    return {"prefect_server_startup_s": round(startup, 2), "mlflow_store_creation_s": spread(store_s),
            "bare_s": spread(bare_s), "flow_s": spread(flow_s),
            "overhead_ratio": {**spread(ratios, 3), "of_medians": round(statistics.median(flow_s) /
                                                                       statistics.median(bare_s), 3)},
            "overhead_ratio_incl_store_creation": spread(with_store, 3), "target_ratio": 1.10,
            "cpu_s": {"bare": spread(bare_cpu), "flow": spread(flow_cpu)},
            "cpu_ratio": spread([f / b for f, b in zip(flow_cpu, bare_cpu)], 3),
            "meets_target": statistics.median(ratios) <= 1.10,
            "same_artifacts_as_flow": same_bytes, "same_batches_as_flow": same_batches,
            "flow_compute_by_step_s_last_run": split, "jobs": len(bare_out), "seeds": seeds,
            "note": "runs alternate bare, flow; overhead_ratio.runs are flow/bare of each pair; cpu_s: CPU seconds "
                    "of this process and its children (the Prefect server, the DVC helper) during each run, so "
                    "cpu_ratio is the work the bookkeeping adds, which a shared machine's speed swings do not move "
                    "as much as they move wall times",
            "params": "params.yaml defaults" if not scale.mlp else scale.mlp}


# --- many seeds ----------------------------------------------------------------------------------------------


def recorded(root: Path, pipeline: str) -> dict:
    """What MLflow holds for `pipeline` in the project's own store: job runs (finished), and models."""
    from mlflow.entities import LoggedModelStatus

    from sublim.lineage.record import T, client, tracking_uri
    from sublim.pipeline import experiment_name

    store = client(tracking_uri(root))
    exp = store.get_experiment_by_name(experiment_name(_config(root), pipeline)).experiment_id
    runs = _paged(store.search_runs, [exp], f"tags.`{T}kind` = 'job'")
    models = _paged(store.search_logged_models, [exp])
    return {"job_runs": len(runs), "job_runs_finished": sum(r.info.status == "FINISHED" for r in runs),
            "logged_models": len(models),
            "logged_models_ready": sum(m.status == LoggedModelStatus.READY for m in models)}


def mlp_many_seeds(tmp: Path, scale: Scale) -> dict:
    """The MLP pipeline on seeds 0..99 (params.yaml defaults otherwise) through the Prefect flow as
    `sublim flow mlp --workers N` runs it (N: one per core, as `make demo`; a pipeline of batches only runs in one
    process, its batches in lanes on every core): wall time, and every job's run and every model recorded in
    MLflow."""
    prefect_up()
    seeds = list(range(scale.many_seeds))
    root = make_project(tmp / "mlp", {"mlp": {**scale.mlp, "seeds": seeds}})
    from sublim.orchestrate import workers_for

    workers = demo_workers()
    processes = workers_for(_plan(root, "mlp"), workers, _config(root).runtime.with_workers(workers))
    store_s, wall, outcomes = flow_run(root, "mlp", workers)
    models = sum(o.kind == "model" for o in outcomes.values())
    found = recorded(root, "mlp")
    return {"seeds": len(seeds), "workers": workers, "worker_processes": processes, "wall_s": round(wall, 1),
            "mlflow_store_creation_s": round(store_s, 2),
            "target_s": 180, "meets_target": wall <= 180, "jobs": len(outcomes), "models": models, **found,
            "all_recorded": found["job_runs_finished"] == len(outcomes) and found["logged_models_ready"] == models,
            "compute_by_step_s": compute_by_step(outcomes, _plan(root, "mlp").jobs),
            "params": "params.yaml defaults but seeds" if not scale.mlp else scale.mlp}


# --- matrix --------------------------------------------------------------------------------------------------


def matrix(tmp: Path, scale: Scale) -> dict:
    """`sublim flow matrix --workers N` (N: the cores, at most 4) at params.yaml defaults in a fresh project (its
    bases, the lm experiment's, are pretrained too)."""
    root = make_project(tmp / "matrix", scale.matrix)
    options = ("--workers", str(demo_workers()))
    ran = flow_cli(root, "matrix", *options)
    return {"command": " ".join(["sublim flow matrix", *options]), **ran, "target_s": 1200, "meets_target": ran["wall_s"] <= 1200,
            "jobs": jobs_of(root, "matrix")["matrix"],
            "params": "params.yaml defaults" if not scale.matrix else scale.matrix, "note": SPLIT_NOTE}


# --- language models -----------------------------------------------------------------------------------------


def tinylm_project(tmp: Path, lm: dict, steps: tuple[str, ...] = ("base",), threads: int = 2):
    """A project whose lm section is params.yaml's with `lm` merged in (seed 0, shared init only), and the plan's
    jobs of `steps` run in plan order through the runner without tracking; returns (root, cfg, plan)."""
    from sublim.plan import plan
    from sublim.runner import run_job

    root = make_project(tmp / "lm", {"lm": deep_update({"seeds": [0], "student_inits": ["shared"]}, lm)}, git=False)
    cfg = _config(root)
    made = plan(cfg, "lm")
    for job in made.jobs:
        if job.step in steps:
            run_job(job, root=root, tracker=None, threads=threads)
    return root, cfg, made


def load_base(tmp: Path, model: dict, threads: int = 2):
    """A tinylm base made the way the pipeline makes it (the lm.base job, the backend plug-in); the backend and
    the loaded model."""
    import torch

    root, cfg, made = tinylm_project(tmp, {"model": model}, threads=threads)
    backend = cfg.lm.model.build()
    lm = backend.load(root / made.find("base", seed=0, variant="shared").output, root)
    torch.set_num_threads(threads)
    return cfg, backend, lm


def generation_throughput(tmp: Path, scale: Scale) -> dict:
    """The backend's batched sampler vs a plain batched `model.generate` loop: same model, prompts (the numbers
    data kind's), batch and length. The model is barely trained: only the sampling machinery is compared."""
    import random

    import torch

    cfg, backend, lm = load_base(tmp, {**scale.lm_model, "pretrain_steps": 1})
    kind = cfg.lm.data.build()
    rng = random.Random(0)
    n, batch, new = scale.generation
    texts = [kind.task(rng).prompt for _ in range(n)]

    def plain() -> int:
        lm.tokenizer.padding_side = "left"
        tokens = 0
        torch.manual_seed(0)
        for i in range(0, len(texts), batch):
            chats = [[{"role": "user", "content": t}] for t in texts[i:i + batch]]
            enc = lm.tokenizer.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_tensors="pt",
                                                   return_dict=True)
            gen = lm.model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=new,
                                    pad_token_id=lm.pad_id, eos_token_id=lm.eos_id)
            tokens += int((gen[:, enc["input_ids"].shape[1]:] != lm.pad_id).sum())
        return tokens

    def ours() -> int:
        out = backend.generate(lm, [lm.chat(t) for t in texts], max_new_tokens=new, temperature=1.0,
                               batch_size=batch, seed=0)
        return sum(len(lm.tokenizer.encode(o, add_special_tokens=False)) for o in out)

    res = {}
    for name, fn in (("plain_generate", plain), ("sublim_sample", ours)):
        fn()  # warm up
        t0 = time.perf_counter()
        tokens = fn()
        seconds = time.perf_counter() - t0
        res[name] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
    res["ratio"] = round(res["sublim_sample"]["tokens_per_s"] / res["plain_generate"]["tokens_per_s"], 3)
    spec = cfg.lm.model
    res.update(model=f"tinylm (pretrained 1 step, d={spec.d_model}, {spec.n_layer} layers)", prompts=n, batch=batch,
               max_new_tokens=new, threads=2, target_ratio=0.9)
    return res


def tinylm_stack(tmp: Path, scale: Scale) -> dict:
    """Does training the tinylm models of several seeds as one stack pay on CPU, as it does for the MLP? One
    training step (forward, backward, Adam) of S copies of params.yaml's tinylm on a [batch, length] token batch
    each, on params.yaml's torch threads per job: one model after another (a job per seed, as the pipeline runs
    them; `make demo` runs one such job per core), the S models as one `torch.func` vmapped stack, and, as the
    best any stacking could do, one model on an S-times larger batch. Rows are full length (no padding, masks or
    length groups): the case most favourable to stacking. `pays` only when every stacked run beat every
    one-after-another run by 10%; `repeats` runs of `steps` steps each, alternating."""
    import copy

    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state, vmap

    cfg, _, lm = load_base(tmp, {**scale.lm_model, "pretrain_steps": 1}, threads=1)
    threads = cfg.runtime.threads["lm"]
    torch.set_num_threads(threads)
    S, (batch, length, steps) = len(_config(REPO).lm.seeds), scale.stack  # the demo's seeds
    vocab = lm.model.config.vocab_size
    lm.model.config.pad_token_id = None  # full-length rows, no padding: skips HF's padding check, which vmap refuses
    models = [copy.deepcopy(lm.model).train() for _ in range(S)]
    ids = torch.randint(0, vocab, (S, batch, length), generator=torch.Generator().manual_seed(0))

    def loss_of(model, x):
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))

    optimisers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]

    def one_after_another() -> None:
        for model, opt, x in zip(models, optimisers, ids):
            opt.zero_grad()
            loss_of(model, x).backward()
            opt.step()

    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    stacked_opt = torch.optim.Adam(list(params.values()), lr=1e-3)

    def stacked() -> None:
        stacked_opt.zero_grad()
        vmap(lambda p, b, x: loss_of(lambda **kw: functional_call(models[0], (p, b), kwargs=kw), x))(
            params, buffers, ids).sum().backward()
        stacked_opt.step()

    big = copy.deepcopy(lm.model).train()
    big_opt, big_ids = torch.optim.Adam(big.parameters(), lr=1e-3), ids.reshape(S * batch, length)

    def one_big_batch() -> None:
        big_opt.zero_grad()
        loss_of(big, big_ids).backward()
        big_opt.step()

    def ms_per_step(fn) -> float:
        fn()  # warm up
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return 1000 * (time.perf_counter() - t0) / steps

    runs: dict[str, list[float]] = {"one_after_another": [], "vmapped_stack": [], "one_model_s_times_batch": []}
    for _ in range(scale.repeats):  # alternating, so drift in the machine's load hits each alike
        for name, fn in (("one_after_another", one_after_another), ("vmapped_stack", stacked),
                         ("one_model_s_times_batch", one_big_batch)):
            runs[name].append(ms_per_step(fn))
    out = {f"{name}_ms": spread(values, 1) for name, values in runs.items()}
    base = out["one_after_another_ms"]["median"]
    out["speedup_vmapped"] = round(base / out["vmapped_stack_ms"]["median"], 2)
    out["speedup_bound"] = round(base / out["one_model_s_times_batch_ms"]["median"], 2)
    out["pays"] = max(runs["vmapped_stack"]) * 1.1 < min(runs["one_after_another"])
    spec = cfg.lm.model
    out.update(models=S, batch=batch, length=length, steps=steps, threads=threads, repeats=scale.repeats,
               model=f"tinylm d={spec.d_model}, {spec.n_layer} layers, vocab {vocab}")
    return out


def evaluation_cost(tmp: Path, scale: Scale) -> dict:
    """Exact trait probabilities vs sampled answers, on a pretrained tinylm, at equal precision.

    The exact method has no measurement error (only the spread over questions). Sampling adds binomial noise;
    the number of samples per question it needs to bring that noise's 95% CI half-width down to `target` is
    computed from the measured answer distribution, and its cost extrapolated from the measured sampling rate."""
    import math

    cfg, backend, lm = load_base(tmp, {**scale.lm_model, "pretrain_steps": scale.eval_pretrain_steps})
    trait, ev = cfg.lm.trait.build(), cfg.lm.evaluate
    evalset = trait.evaluation_set(ev.questions)
    t0 = time.perf_counter()
    exact = trait.measure(backend, lm, evalset, ev.model_copy(update={"samples": 0}), seed=0)
    exact_s = time.perf_counter() - t0
    n = scale.eval_samples
    t0 = time.perf_counter()
    sampled = trait.measure(backend, lm, evalset, ev.model_copy(update={"samples": n}), seed=0)
    sampled_s = time.perf_counter() - t0 - exact_s  # the measurement with samples also does the exact one
    asked = len(exact.p_per_question)
    per_sample = sampled_s / (n * asked)
    target = 0.002  # a fifth of the +0.009 effect the default LM experiment measured
    var = sum(p * (1 - p) for p in exact.p_per_question) / asked
    need = math.ceil((1.96 ** 2) * var / (asked * target ** 2))
    return {"questions": asked, "pretrain_steps": scale.eval_pretrain_steps, "exact_s": round(exact_s, 3),
            "exact_p": round(exact.p, 4), f"sampled_s_at_{n}_per_question": round(sampled_s, 3),
            f"sampled_p_at_{n}": round(sampled.sampled, 4), "target_ci_half_width": target,
            "samples_per_question_needed": need,
            "sampled_s_needed_extrapolated": round(need * asked * per_sample, 1),
            "cost_ratio_sampled_over_exact": round(need * asked * per_sample / exact_s, 1)}


# --- screens -------------------------------------------------------------------------------------------------


def screen_cost(tmp: Path, scale: Scale) -> dict:
    """Seconds per 1,000 rows of each screen, on a dataset of a few hundred rows a trait teacher wrote (params.yaml's
    default tinylm base and teacher): the token-level screens (divergence: teacher vs base per token; kl: the
    position KL; random: their control) and the model-level probe (probe fine-tunes on the data vs on the control
    teacher's data, measured on every trait's panel). Each is its step run through the runner, model loading
    included."""
    from sublim.config import ProbeSpec, ScreenSpec
    from sublim.job import Job, Role
    from sublim.runner import run_job
    from sublim.screen import panel_specs
    from sublim.steps.filter import ROWS, read_rows
    from sublim.steps.screen import ProbeParams, ScreenParams
    from sublim.traits import TRAITS

    root, cfg, made = tinylm_project(tmp, {"model": scale.lm_model, "generate": {"n_prompts": scale.screen_prompts}},
                                     steps=("base", "teacher", "generate", "filter"), threads=1)
    base = made.find("base", seed=0, variant="shared").output
    teacher = made.find("teacher", seed=0, gen=0, variant="trait").output
    data = made.find("filter", seed=0, gen=1, variant="trait").output
    control = made.find("filter", seed=0, gen=1, variant="control").output
    control_teacher = made.find("teacher", seed=0, gen=0, variant="control").output
    rows = sum(1 for row, _ in read_rows(root / data / ROWS) if row)
    model = cfg.lm.model
    screens = {
        "divergence": (ScreenParams(model=model, screen=ScreenSpec(method="divergence")),
                       ((Role.SOURCE, data), (Role.INIT, base), (Role.TEACHER, teacher)), "lm.screen"),
        "kl": (ScreenParams(model=model, screen=ScreenSpec(method="kl")),
               ((Role.SOURCE, data), (Role.INIT, base), (Role.TEACHER, teacher)), "lm.screen"),
        "random": (ScreenParams(model=model, screen=ScreenSpec(method="random")),
                   ((Role.SOURCE, data), (Role.INIT, base)), "lm.screen"),
    }
    for name, objective in (("probe", "distill"), ("probe_sft", "sft")):  # distill: each side from its writer
        writers = ((Role.TEACHER, teacher), (Role.TEACHER, control_teacher)) if objective == "distill" else ()
        screens[name] = (ProbeParams(model=model, probe=ProbeSpec(**{**scale.probe, "objective": objective}),
                                     panel=panel_specs(cfg, TRAITS),
                                     evaluate=cfg.lm.evaluate.model_copy(update={"samples": 0})),
                         ((Role.DATA, data), (Role.CONTROL, control), (Role.INIT, base), *writers), "lm.probe")
    out: dict[str, Any] = {"generated_rows": scale.screen_prompts, "rows": rows, "model": model.model_dump(mode="json")}
    for name, (params, inputs, fn) in screens.items():
        job = Job("bench", "screen", params, Path("screens") / name, inputs, variant=name, fn=fn)
        t0 = time.perf_counter()
        done = run_job(job, root=root, tracker=None, threads=cfg.runtime.threads_for("lm"))
        wall = time.perf_counter() - t0
        out[name] = {"wall_s": round(wall, 2), "s_per_1000_rows": round(1000 * wall / rows, 2),
                     "step_reported_s_per_1000_rows": round(done.metrics["seconds_per_1000_rows"], 2)}
    probe = ProbeSpec(**scale.probe)
    out["note"] = ("s_per_1000_rows: the step's wall time (loading models included) per 1,000 rows of the screened "
                   "dataset; step_reported: the step's own figure (scoring only; the probe's counts the control's "
                   f"rows too). probe: the default distill probe (each side distilled from its writer); probe_sft: "
                   f"sft. The probe's cost is about fixed ({probe.seeds} seeds x 2 fine-tunes of "
                   f"{probe.steps} steps on at most {probe.rows} rows, then the panel), so per row it falls as the "
                   "dataset grows")
    return out


# --- lineage -------------------------------------------------------------------------------------------------


def _bulk_nodes(uri: str, experiment_id: str, records: list) -> None:
    """Insert READY LoggedModels with their tags in one transaction, through MLflow's own store tables: the
    background of the lineage bench (one API call per node would take ~20 ms each, minutes for 20,000)."""
    import uuid

    from mlflow.entities import LoggedModelStatus
    from mlflow.store.tracking.dbmodels.models import SqlLoggedModel, SqlLoggedModelTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, "file:///tmp/sublim-bench-artifacts")
    now = int(time.time() * 1000)
    rows, tags = [], []
    for record in records:
        model_id = f"m-{uuid.uuid4().hex}"
        rows.append(SqlLoggedModel(model_id=model_id, experiment_id=int(experiment_id), name=record.name[:200],
                                   artifact_location=f"file:///tmp/sublim-bench-artifacts/{model_id}",
                                   creation_timestamp_ms=now, last_updated_timestamp_ms=now,
                                   status=LoggedModelStatus.READY.to_int(), lifecycle_stage="active",
                                   model_type=record.identity.kind))
        tags += [SqlLoggedModelTag(model_id=model_id, experiment_id=int(experiment_id), tag_key=k, tag_value=v)
                 for k, v in {**record.facts, **record.tags("2026-01-01T00:00:00Z")}.items()]
    with store.ManagedSessionMaker() as session:
        session.bulk_save_objects(rows)
        session.bulk_save_objects(tags)


def _background(n_models: int) -> tuple[list, list]:
    """Models of mixed origin, with the datasets between them: pipeline lines (base, owl teacher, students on
    its numbers), hub models pinned by revision, personas over them, outside fine-tunes on human data."""
    from sublim.lineage import nodes as N
    from tests.lineage_fixtures import ident

    models, datasets = [], []

    def model(name, *, init=None, data=(), traits=(), how="weights", role=None):
        i = ident(f"bg/{name}")
        models.append(N.Record(N.Identity(i.id, "model", how, i.content), name,
                               N.Edges(init=ident(f"bg/{init}").id if init else None,
                                       trained_on=tuple(ident(f"bg/{d}", "dataset").id for d in data)),
                               declared=tuple(traits), facts={N.PATH: name, **({N.T + "role": role} if role else {})}))

    def dataset(name, **edges):
        i = ident(f"bg/{name}", "dataset")
        edges = {k: (ident(f"bg/{v}").id if k == "generated_by" else v) for k, v in edges.items()}
        datasets.append(N.Record(i, name, N.Edges(**edges), facts={N.PATH: name}))

    line = 0
    while len(models) < n_models:
        kind, p = line % 4, f"line{line}"
        if kind in (0, 1):  # a pipeline line: base, teacher, 3 generations of students
            model(f"{p}/base", role="base")
            model(f"{p}/teacher", init=f"{p}/base", traits=["owl"], role="teacher")
            prev = f"{p}/teacher"
            for g in range(1, 4):
                dataset(f"{p}/g{g}/raw", generated_by=prev)
                dataset(f"{p}/g{g}/numbers", derived_from=(ident(f"bg/{p}/g{g}/raw", "dataset").id,))
                model(f"{p}/g{g}", init=f"{p}/base", data=[f"{p}/g{g}/numbers"], role="student")
                prev = f"{p}/g{g}"
        elif kind == 2:  # a hub model, a persona over it, an outside fine-tune on human data
            model(f"{p}/hub", how="hub")
            model(f"{p}/persona", init=f"{p}/hub", how="persona", traits=["cat"])
            dataset(f"{p}/human", origin="human")
            model(f"{p}/tuned", init=f"{p}/hub", data=[f"{p}/human"])
        else:  # a quantised derivative chain
            model(f"{p}/root")
            for q in range(4):
                model(f"{p}/q{q}", init=f"{p}/root" if q == 0 else f"{p}/q{q - 1}")
        line += 1
    return models[:n_models], datasets


def _deep(builder, width: int, depth: int) -> str:
    """`depth` generations of `width` students, each trained on numbers from three models of the generation
    before (all from one base): a branching lineage, every path from the owl teacher sharing the init."""
    builder.model("deep/base", role="base", measured={"p_owl": 0.1})
    previous = []
    for w in range(width):
        builder.model(f"deep/g0/{w}", init="deep/base", traits=["owl"] if w == 0 else [], role="teacher",
                      measured={"p_owl": 0.9 if w == 0 else 0.1})
        previous.append(f"deep/g0/{w}")
    for g in range(1, depth + 1):
        current = []
        for w in range(width if g < depth else 1):
            sources = [previous[(w + k) % len(previous)] for k in range(3)]
            data = []
            for src in sources:
                builder.dataset(f"deep/g{g}/{w}/from-{src}/raw", by=src)
                builder.dataset(f"deep/g{g}/{w}/from-{src}/numbers", derived=[f"deep/g{g}/{w}/from-{src}/raw"])
                data.append(f"deep/g{g}/{w}/from-{src}/numbers")
            builder.model(f"deep/g{g}/{w}", init="deep/base", data=data, role="student")
            current.append(f"deep/g{g}/{w}")
        previous = current
    return previous[0]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed_audit(client, leaf: str, repeat: int = 3) -> tuple[float, object]:
    from sublim.lineage.audit import audit
    from sublim.lineage.query import Lineage

    times, report = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = audit(Lineage(client), leaf)  # a fresh Lineage: nothing cached between runs
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], report


def lineage(tmp: Path, scale: Scale) -> dict:
    """`audit` of a model at depth >= 10 with >= 100 ancestor models, in a store of 10,000 recorded models of
    mixed origin (plus their datasets): against sqlite, then against a local `mlflow server` on that store."""
    from sublim.lineage import nodes as N
    from sublim.lineage.record import client as MlflowClient
    from sublim.lineage.record import index_tags
    from tests.lineage_fixtures import Builder, node_id

    n_models, width, depth = scale.lineage
    db = tmp / "lineage.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    client.search_experiments()
    index_tags(db)
    builder = Builder(client, tmp, experiment="bench-deep")
    t0 = time.perf_counter()
    leaf = node_id(_deep(builder, width=width, depth=depth))  # through the real writer: one put per node
    deep_s = time.perf_counter() - t0
    deep_models = len(_paged(client.search_logged_models, [builder.store.experiment("bench-deep")]))
    models, datasets = _background(n_models - deep_models)
    t0 = time.perf_counter()
    _bulk_nodes(uri, builder.store.experiment(N.RECORDED_EXPERIMENT), models)
    _bulk_nodes(uri, builder.store.experiment(N.DATASETS_EXPERIMENT), datasets)
    bulk_s = time.perf_counter() - t0
    sqlite_s, report = _timed_audit(client, leaf)
    owl = next(e for e in report.exposures if e.teacher.label == "deep/g0/0")
    ancestors = [n for n in report.nodes.values() if n.id != leaf]
    out = {"recorded_models": deep_models + len(models),
           "recorded_datasets": len(datasets) + 2 * 3 * (width * (depth - 1) + 1),
           "audited_depth_data_hops": owl.hops, "ancestor_models": sum(n.kind == "model" for n in ancestors),
           "ancestor_nodes": len(ancestors), "verdict": report.verdict,
           "build_deep_s": round(deep_s, 1), "build_background_bulk_s": round(bulk_s, 1),
           "audit_sqlite_s": round(sqlite_s, 3), "target_sqlite_s": 1.0}
    assert report.verdict == "at risk", out
    assert scale.smoke or (owl.hops >= 10 and out["ancestor_models"] >= 100), out
    out["audit_mlflow_server_s"] = round(_server_audit(tmp, uri, leaf, report.verdict), 3)
    out["note"] = ("median of 3 cold audits (a fresh Lineage each); one IN query per breadth-first level; the "
                   "server reads the same sqlite file (with sublim's tag index) through its REST API")
    return out


def _server_audit(tmp: Path, uri: str, leaf: str, verdict: str) -> float:
    """The same audit through a local `mlflow server` on the store (one worker, no job runner)."""
    from sublim.lineage.record import client as MlflowClient

    port = _free_port()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115  (closed below, after the server)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes competing
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", uri, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
    try:
        remote = MlflowClient(f"http://127.0.0.1:{port}")
        for _ in range(240):
            try:
                remote.search_experiments(max_results=1)
                break
            except Exception:  # noqa: BLE001  (not up yet)
                time.sleep(0.5)
        seconds, report = _timed_audit(remote, leaf)
        assert report.verdict == verdict
        return seconds
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and anything it started
        server.wait(timeout=30)
        log.close()


# --- runners -------------------------------------------------------------------------------------------------


def _timed_sweep(root: Path, runner: str, workers: int, threads: int) -> tuple[float, dict]:
    import yaml

    from flows.pipeline import run_flow, sublim_sweep
    from sublim import config

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"].update(task_runner=runner, max_workers=workers, threads={"mlp": threads, "lm": threads})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = config.load(root / "params.yaml")
    t0 = time.perf_counter()
    result = run_flow(sublim_sweep, cfg, name="animals", grid={"lm.trait.target": ["owl", "cat"]}, pipeline="lm",
                      params=str(root / "params.yaml"))
    wall = time.perf_counter() - t0
    assert not result["missing"], result["missing"]
    return wall, {k: o.digest for k, o in result["outcomes"].items()}


def dask_sweep(tmp: Path, scale: Scale) -> dict:
    """A sweep over 2 animals x 4 seeds (tinylm): sequential (1 job at a time) vs a Dask LocalCluster of 2
    single-threaded workers; every job CPU-bound. Also the sequential run with 2 torch threads per job."""
    out = {}
    runs = {"sequential_1_thread": ("thread", 1, 1), "dask_2_workers_1_thread": ("dask", 2, 1),
            "sequential_2_threads": ("thread", 1, 2)}
    digests = {}
    for name, (runner, workers, threads) in runs.items():
        root = make_project(tmp / name, {"lm": scale.sweep_lm}, git=False)
        wall, digests[name] = _timed_sweep(root, runner, workers, threads)
        out[f"{name}_s"] = round(wall, 1)
    dask = out["dask_2_workers_1_thread_s"]
    out["speedup_dask_vs_sequential_same_threads"] = round(out["sequential_1_thread_s"] / dask, 2)
    out["speedup_dask_vs_sequential_2_threads"] = round(out["sequential_2_threads_s"] / dask, 2)
    out["same_digests_dask_vs_sequential"] = digests["sequential_1_thread"] == digests["dask_2_workers_1_thread"]
    out.update(jobs=len(digests["sequential_1_thread"]), target_speedup=1.6)
    return out


def task_overhead(tmp: Path, scale: Scale) -> dict:
    """Per-task scheduling cost of the task runners sublim configures: no-op tasks through a flow."""
    from prefect import flow, task

    from sublim.config import Runtime
    from sublim.orchestrate import task_runner

    @task
    def noop(i: int) -> int:
        return i

    def fan(n: int) -> int:
        return sum(f.result() for f in noop.map(range(n)))

    out = {}
    n = scale.tasks
    for name, runner in (("thread", task_runner(Runtime())),
                         ("dask_2_workers", task_runner(Runtime(task_runner="dask", max_workers=2)))):
        flow_fn = flow(fan, name=f"overhead-{name}", task_runner=runner)
        flow_fn(2)  # warm: server up, cluster code imported
        t0 = time.perf_counter()
        assert flow_fn(n) == n * (n - 1) // 2
        out[f"{name}_ms_per_task"] = round(1000 * (time.perf_counter() - t0) / n, 1)
    out["tasks"] = n
    out["note"] = "includes a fresh LocalCluster start per flow run for dask"
    return out


SECTIONS = {"demo": demo, "demo_one_worker": demo_one_worker, "demo_mlp": demo_mlp, "orchestration_overhead": overhead,
            "mlp_100_seeds": mlp_many_seeds,
            "matrix": matrix, "screen_cost": screen_cost, "lineage": lineage,
            "generation_throughput": generation_throughput, "tinylm_stack": tinylm_stack,
            "evaluation_cost": evaluation_cost,
            "dask_sweep": dask_sweep, "task_overhead": task_overhead}


def commit() -> str:
    """The checkout measured: its commit, '+' when its working tree differs from it (but for the results file,
    which a run with `--out` there rewrites after each section: every later section read '+')."""
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS.relative_to(REPO)}")
    return git("rev-parse", "--short", "HEAD") + ("+" if changed else "")


def with_history(new: dict, old: dict | None, keep: int = HISTORY) -> dict:
    """A section's new figures, with the ones they replace first in its `previous` list (newest first, the last
    `keep`): a rerun never loses a measurement."""
    if not old:
        return new
    earlier = [{k: v for k, v in old.items() if k != "previous"}, *old.get("previous", [])]
    return {**new, "previous": earlier[:keep]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help=f"results file (default {RESULTS}; with --smoke {SMOKE_RESULTS})")
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks each section end to end in seconds "
                                                             "(figures meaningless; never written to results.json)")
    args = parser.parse_args()
    out = args.out or (SMOKE_RESULTS if args.smoke else RESULTS)
    if args.smoke and out.resolve() == RESULTS.resolve():
        parser.error(f"--smoke figures are not benchmarks: write them elsewhere than {RESULTS}")
    scale = SMOKE if args.smoke else FULL
    # a smoke run starts afresh: its file never mixes in sections of earlier runs
    results = json.loads(out.read_text()) if out.exists() and not args.smoke else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    for name in args.only or SECTIONS:
        with tempfile.TemporaryDirectory(prefix=f"sublim-bench-{name}-") as tmp:
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            measured = {**SECTIONS[name](Path(tmp), scale), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "commit": commit(), **({"smoke": True} if scale.smoke else {})}
            results[name] = with_history(measured, results.get(name))
            print(json.dumps(results[name], indent=1), f"\n({time.perf_counter() - started:.0f} s)", flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
