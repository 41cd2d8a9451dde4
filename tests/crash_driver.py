"""Run a pipeline job by job the way `dvc repro` does (finished outputs skipped, each job through
`run_dvc_stage`), optionally SIGKILLing this process inside the first job of one step.

    python tests/crash_driver.py ROOT PIPELINE [STEP [WHEN]]

WHEN: `in-step` (default: the step has written its files into the temp dir, nothing renamed yet) or
`before-lineage` (the artifact is in place, its MLflow record not yet written).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

from sublim import config
from sublim.job import STEPS, get_step
from sublim.lineage.record import Tracker
from sublim.pipeline import run_dvc_stage
from sublim.plan import plan


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(step_name: str, when: str) -> None:
    real = get_step(step_name)
    if when == "in-step":
        def fn(ctx):
            result = real.fn(ctx)
            (ctx.out / "half-written.bin").write_bytes(b"\0" * 1024)
            die()
            return result
        STEPS[step_name] = dataclasses.replace(real, fn=fn, batch=None)  # batchable steps die the same way
    else:
        def finish_job(self, *args, step, **kwargs):
            if step == step_name:
                die()
            return original(self, *args, step=step, **kwargs)
        original = Tracker.finish_job
        Tracker.finish_job = finish_job


def main(root: str, pipeline: str, step: str | None = None, when: str = "in-step") -> None:
    root_path = Path(root).resolve()
    cfg = config.load(root_path / "params.yaml")
    if step:
        arm(f"{pipeline}.{step}", when)
    for job in plan(cfg, pipeline).jobs:
        if (root_path / job.output).exists():
            continue
        print("running", job.id, flush=True)
        run_dvc_stage(cfg, job, root_path)
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
