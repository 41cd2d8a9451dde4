"""`make bench`: speed figures written to benchmarks/results.json (never asserted in tests).

Sections: demo wall time; orchestration overhead (Prefect flow + MLflow vs bare step functions).
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
        seed_everything(job.rng_seed, cfg.runtime.threads)
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
            "target_ratio": 1.10, "jobs": 37, "params": "params.yaml defaults (5 seeds)"}


def demo(tmp: Path) -> dict:
    """`sublim flow all` as `make demo` runs it, in a fresh project (own process, own Prefect server)."""
    root = make_project(tmp / "demo")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    subprocess.run(["sublim", "flow", "all"], cwd=root, env=env, check=True, capture_output=True)
    return {"wall_s": round(time.perf_counter() - start, 1), "command": "sublim flow all"}


SECTIONS = {"demo": demo, "orchestration_overhead": overhead}


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
