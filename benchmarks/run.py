"""`make bench`: speed figures written to benchmarks/results.json (never asserted in tests).

Sections: demo wall time; orchestration overhead (Prefect flow + MLflow vs bare step functions); lineage query
times as lineage grows; LM generation throughput vs plain `generate`; exact vs sampled evaluation cost; a
2-worker Dask sweep vs the sequential sweep; per-task scheduling overhead of the task runners.
Each section runs in a fresh temporary project so caches cannot flatter the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from tests.conftest import make_project  # noqa: E402  (the same throwaway-project helper the tests use)


def bare_steps(root: Path) -> float:
    """Only the step functions (plus the metadata files later steps read): no Prefect, MLflow, digests."""
    from sublim import config
    from sublim.artifacts import ArtifactMeta, write_meta
    from sublim.job import StepContext, get_step, seed_everything
    from sublim.plan import plan
    from sublim.runner import derive_lineage, quiet

    cfg = config.load(root / "params.yaml")
    start = time.perf_counter()
    for job in plan(cfg, "mlp").jobs:
        out = root / job.output
        out.mkdir(parents=True)
        seed_everything(job.rng_seed, cfg.runtime.threads_for("mlp"))
        result = get_step(job.step_name).fn(StepContext(job=job, root=root, out=out, progress=quiet))
        write_meta(out, ArtifactMeta(result.kind, job.id, job.step_name, {}, {}, derive_lineage(job, [], result, "mlp")))
    return time.perf_counter() - start


def flow_run(root: Path) -> float:
    from flows.pipeline import build
    from sublim import config

    cfg = config.load(root / "params.yaml")
    start = time.perf_counter()
    result = build(cfg)(pipeline="mlp", params=str(root / "params.yaml"))
    assert not result["missing"], result["missing"]
    return time.perf_counter() - start


def overhead(tmp: Path) -> dict:
    from prefect import flow

    @flow
    def warm() -> int:
        return 1

    t0 = time.perf_counter()
    warm()  # start the ephemeral server: the target is stated "once the server is up"
    startup = time.perf_counter() - t0
    bare = bare_steps(make_project(tmp / "bare", git=False))
    root = make_project(tmp / "flow")
    t0 = time.perf_counter()
    from sublim import config
    from sublim.pipeline import tracker

    tracker(config.load(root / "params.yaml"), "mlp", root)  # create the MLflow store once, like the server
    store_init = time.perf_counter() - t0
    orchestrated = flow_run(root)
    return {"prefect_server_startup_s": round(startup, 2), "mlflow_store_creation_s": round(store_init, 2),
            "bare_steps_s": round(bare, 2), "prefect_flow_s": round(orchestrated, 2),
            "overhead_ratio": round(orchestrated / bare, 3),
            "overhead_ratio_incl_store_creation": round((orchestrated + store_init) / bare, 3),
            "target_ratio": 1.10, "jobs": _jobs(root, "mlp"), "params": "params.yaml defaults (5 seeds)"}


def _jobs(root: Path, pipeline: str) -> int:
    from sublim import config
    from sublim.plan import plan

    return len(plan(config.load(root / "params.yaml"), pipeline).jobs)


def demo(tmp: Path) -> dict:
    """`sublim flow all` as `make demo` runs it, in a fresh project (own process, own Prefect server)."""
    root = make_project(tmp / "demo")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    subprocess.run(["sublim", "flow", "all"], cwd=root, env=env, check=True, capture_output=True)
    return {"wall_s": round(time.perf_counter() - start, 1), "command": "sublim flow all"}


def lineage_queries(tmp: Path) -> dict:
    """ancestors and audit of a leaf in synthetic lineages of 100 / 1,000 / 5,000 models in 10 generations,
    each in a fresh sqlite store (cold query cache: a new Lineage per query)."""
    from sublim.lineage.query import Lineage, audit
    from sublim.lineage.record import _wal
    from sublim.lineage.record import client as MlflowClient
    from tests.lineage_fixtures import chain, digest_of

    out = {}
    for n in (100, 1000, 5000):
        db = tmp / f"lineage-{n}.db"
        client = MlflowClient(f"sqlite:///{db}")
        client.search_experiments()
        _wal(db)
        exp = client.create_experiment("bench")
        t0 = time.perf_counter()
        leaves = chain(client, exp, n, 10)
        built = time.perf_counter() - t0
        leaf = digest_of(leaves[-1])
        t0 = time.perf_counter()
        hops = Lineage(client).ancestors(leaf)
        anc = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, exposures = audit(Lineage(client), leaf)
        aud = time.perf_counter() - t0
        assert len(hops) == 10 and sum(e.at_risk for e in exposures) == 1
        out[str(n)] = {"models": len(leaves) * 11, "build_s": round(built, 1), "ancestors_s": round(anc, 3),
                       "audit_s": round(aud, 3), "ancestors_found": len(hops)}
    out["target_s"] = 1.0
    return out


def _tinylm(pretrain_steps: int):
    import torch

    from sublim.backends import lm as lmlib
    from sublim.backends import tinylm
    from sublim.config import LmTrait, TinyLm

    cfg, trait = TinyLm(pretrain_steps=pretrain_steps), LmTrait()
    tok = tinylm.build_tokenizer(trait.category, trait.choices)
    torch.set_num_threads(2)
    return lmlib, lmlib.LM(tinylm.build_model(len(tok), cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context, 0).eval(), tok)


def generation_throughput(tmp: Path) -> dict:
    """sublim's batched sampler vs a plain batched `model.generate` loop: same model, prompts, batch, length."""
    import random

    import torch

    from sublim.prompts.numbers import make_prompt

    lmlib, lm = _tinylm(1)
    rng = random.Random(0)
    texts = [make_prompt(rng).text for _ in range(1000)]
    batch, new = 250, 40

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
        out = lmlib.sample(lm, [lm.chat(t) for t in texts], max_new_tokens=new, temperature=1.0, batch_size=batch, seed=0)
        return sum(len(lm.tokenizer.encode(o, add_special_tokens=False)) for o in out)

    res = {}
    for name, fn in (("plain_generate", plain), ("sublim_sample", ours)):
        fn()  # warm up
        t0 = time.perf_counter()
        tokens = fn()
        res[name] = {"tokens": tokens, "seconds": round(time.perf_counter() - t0, 2),
                     "tokens_per_s": round(tokens / (time.perf_counter() - t0), 1)}
    res["ratio"] = round(res["sublim_sample"]["tokens_per_s"] / res["plain_generate"]["tokens_per_s"], 3)
    res.update(model="tinylm (random init, d=64, 2 layers)", prompts=len(texts), batch=batch, max_new_tokens=new,
               target_ratio=0.9)
    return res


def evaluation_cost(tmp: Path) -> dict:
    """Exact trait probabilities vs sampled answers, on a pretrained tinylm, at equal precision.

    The exact method has no measurement error (only the spread over questions). Sampling adds binomial noise;
    the number of samples per question it needs to bring that noise's 95% CI half-width down to `target` is
    computed from the measured answer distribution, and its cost extrapolated from the measured sampling rate."""
    import math

    from sublim.config import LmEvaluate, LmTrait
    from sublim.prompts.traits import questions
    from sublim.steps.evaluate import trait_rates

    from sublim.backends import lm as lmlib

    root = make_project(tmp / "eval", {"lm": {"model": {"backend": "tinylm", "pretrain_steps": 300}}}, git=False)
    from sublim import config
    from sublim.plan import plan
    from sublim.runner import run_job

    job = plan(config.load(root / "params.yaml"), "lm").get("lm.base@shared")
    run_job(job, root=root, tracker=None, threads=2)
    lm = lmlib.load(root / job.output, root)
    trait, asked = LmTrait(), questions("evaluate", "animal")
    t0 = time.perf_counter()
    exact = trait_rates(lm, asked, trait.choices, trait.target, LmEvaluate(samples=0), seed=0)
    exact_s = time.perf_counter() - t0
    n = 20
    t0 = time.perf_counter()
    sampled = trait_rates(lm, asked, trait.choices, trait.target, LmEvaluate(samples=n), seed=0)
    sampled_s = time.perf_counter() - t0 - exact_s
    per_sample = sampled_s / (n * len(asked))
    target = 0.002  # a fifth of the +0.009 effect the default LM experiment measures
    var = sum(p * (1 - p) for p in exact["p_per_question"]) / len(asked)
    need = math.ceil((1.96 ** 2) * var / (len(asked) * target ** 2))
    return {"questions": len(asked), "exact_s": round(exact_s, 3), "exact_p": round(exact["p_target"], 4),
            "sampled_s_at_20_per_question": round(sampled_s, 3), "sampled_p_at_20": round(sampled["sampled_rate"], 4),
            "target_ci_half_width": target, "samples_per_question_needed": need,
            "sampled_s_needed_extrapolated": round(need * len(asked) * per_sample, 1),
            "cost_ratio_sampled_over_exact": round(need * len(asked) * per_sample / exact_s, 1)}


SWEEP_LM = {"seeds": [0, 1, 2, 3], "student_inits": ["shared"],
            "model": {"backend": "tinylm", "pretrain_steps": 300},
            "teacher": {"steps": 30}, "generate": {"n_prompts": 500}, "student": {"steps": 100},
            "evaluate": {"samples": 0}}


def _timed_sweep(root: Path, runner: str, workers: int, threads: int) -> tuple[float, dict]:
    import yaml

    from flows.pipeline import build, sublim_sweep
    from sublim import config

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"].update(task_runner=runner, max_workers=workers, threads={"mlp": threads, "lm": threads})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = config.load(root / "params.yaml")
    t0 = time.perf_counter()
    result = build(cfg, sublim_sweep)(name="animals", grid={"lm.trait.target": ["owl", "cat"]}, pipeline="lm",
                                      params=str(root / "params.yaml"))
    wall = time.perf_counter() - t0
    assert not result["missing"], result["missing"]
    return wall, {k: o.digest for k, o in result["outcomes"].items()}


def dask_sweep(tmp: Path) -> dict:
    """A sweep over 2 animals x 4 seeds (tinylm, 37 jobs): sequential (1 job at a time) vs a Dask LocalCluster of
    2 single-threaded workers; every job CPU-bound. Also the sequential run with 2 torch threads per job."""
    out = {}
    runs = {"sequential_1_thread": ("thread", 1, 1), "dask_2_workers_1_thread": ("dask", 2, 1),
            "sequential_2_threads": ("thread", 1, 2)}
    digests = {}
    for name, (runner, workers, threads) in runs.items():
        root = make_project(tmp / name, {"lm": SWEEP_LM}, git=False)
        wall, digests[name] = _timed_sweep(root, runner, workers, threads)
        out[f"{name}_s"] = round(wall, 1)
    out["speedup_dask_vs_sequential_same_threads"] = round(out["sequential_1_thread_s"] / out["dask_2_workers_1_thread_s"], 2)
    out["speedup_dask_vs_sequential_2_threads"] = round(out["sequential_2_threads_s"] / out["dask_2_workers_1_thread_s"], 2)
    out["same_digests_dask_vs_sequential"] = digests["sequential_1_thread"] == digests["dask_2_workers_1_thread"]
    out.update(jobs=len(digests["sequential_1_thread"]), target_speedup=1.6)
    return out


def task_overhead(tmp: Path) -> dict:
    """Per-task scheduling cost of the task runners sublim configures: 200 no-op tasks through a flow."""
    from prefect import flow, task

    from sublim.config import Runtime
    from sublim.orchestrate import task_runner

    @task
    def noop(i: int) -> int:
        return i

    def fan(n: int) -> int:
        return sum(f.result() for f in noop.map(range(n)))

    out = {}
    n = 200
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


SECTIONS = {"demo": demo, "orchestration_overhead": overhead, "lineage_queries": lineage_queries,
            "generation_throughput": generation_throughput, "evaluation_cost": evaluation_cost,
            "dask_sweep": dask_sweep, "task_overhead": task_overhead}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="run only these sections")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    for name in args.only or SECTIONS:
        with tempfile.TemporaryDirectory(prefix=f"sublim-bench-{name}-") as tmp:
            print(f"== {name}", flush=True)
            results[name] = {**SECTIONS[name](Path(tmp)), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
            print(json.dumps(results[name], indent=1), flush=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
