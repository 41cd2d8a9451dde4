"""`make bench`: speed figures written to benchmarks/results.json (never asserted in tests).

Sections: demo wall time; orchestration overhead (Prefect flow + MLflow vs bare step functions); `audit` of a
deep, branching lineage in a store of 10,000 models (sqlite and an MLflow server); LM generation throughput vs plain `generate`; exact vs sampled evaluation cost; a
2-worker Dask sweep vs the sequential sweep; per-task scheduling overhead of the task runners.
Each section runs in a fresh temporary project so caches cannot flatter the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
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


def lineage(tmp: Path) -> dict:
    """`audit` of a model at depth >= 10 with >= 100 ancestor models, in a store of 10,000 recorded models of
    mixed origin (plus their datasets): against sqlite, then against a local `mlflow server` on that store."""
    from sublim.lineage import nodes as N
    from sublim.lineage.record import client as MlflowClient
    from sublim.lineage.record import index_tags
    from tests.lineage_fixtures import Builder, node_id

    db = tmp / "lineage.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    client.search_experiments()
    index_tags(db)
    builder = Builder(client, tmp, experiment="bench-deep")
    t0 = time.perf_counter()
    leaf = node_id(_deep(builder, width=10, depth=12))  # through the real writer: one put per node
    deep_s = time.perf_counter() - t0
    deep_models = len([r for r in client.search_logged_models([builder.store.experiment("bench-deep")],
                                                              max_results=1000)])
    models, datasets = _background(10_000 - deep_models)
    t0 = time.perf_counter()
    _bulk_nodes(uri, builder.store.experiment(N.RECORDED_EXPERIMENT), models)
    _bulk_nodes(uri, builder.store.experiment(N.DATASETS_EXPERIMENT), datasets)
    bulk_s = time.perf_counter() - t0
    sqlite_s, report = _timed_audit(client, leaf)
    owl = next(e for e in report.exposures if e.teacher.label == "deep/g0/0")
    ancestors = [n for n in report.nodes.values() if n.id != leaf]
    out = {"recorded_models": deep_models + len(models), "recorded_datasets": len(datasets) + 2 * 3 * (10 * 11 + 1),
           "audited_depth_data_hops": owl.hops, "ancestor_models": sum(n.kind == "model" for n in ancestors),
           "ancestor_nodes": len(ancestors), "verdict": report.verdict,
           "build_deep_s": round(deep_s, 1), "build_background_bulk_s": round(bulk_s, 1),
           "audit_sqlite_s": round(sqlite_s, 3), "target_sqlite_s": 1.0}
    assert owl.hops >= 10 and out["ancestor_models"] >= 100 and report.verdict == "at risk", out
    port = _free_port()
    log = open(tmp / "server.log", "wb")
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
        server_s, remote_report = _timed_audit(remote, leaf)
        assert remote_report.verdict == report.verdict
        out["audit_mlflow_server_s"] = round(server_s, 3)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and anything it started
        server.wait(timeout=30)
        log.close()
    out["note"] = ("median of 3 cold audits (a fresh Lineage each); one IN query per breadth-first level; the "
                   "server reads the same sqlite file (with sublim's tag index) through its REST API")
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


SECTIONS = {"demo": demo, "orchestration_overhead": overhead, "lineage": lineage,
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
