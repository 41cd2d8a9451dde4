"""Scheduled runs: serve the pipelines as Prefect deployments on the cron schedule in params.yaml.

`sublim serve` (or `make serve`) registers one deployment per pipeline with the parameters of params.yaml and
serves them from this process; the same deployments can run on a process work pool instead (prefect.yaml +
`prefect worker start --pool sublim`). Point PREFECT_API_URL at a `prefect server start` to see them in its UI.
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve

from flows.pipeline import build
from sublim import config


def deployments(params: Path, *, cron: str | None = None):
    """One deployment per scheduled pipeline, parameterised with this params file."""
    cfg = config.load(params)
    flow = build(cfg)
    schedule = cron if cron is not None else cfg.schedule.cron
    return [flow.to_deployment(name=f"sublim-{name}", cron=schedule or None, tags=["sublim", name],
                               parameters={"pipeline": name, "params": str(Path(params).resolve())},
                               description=f"the {name} pipeline of {Path(params).resolve()}")
            for name in cfg.schedule.pipelines]


def serve_all(params: Path, *, cron: str | None = None, limit: int | None = None) -> None:
    """Block, running deployments when their schedule (or a manual trigger) says so."""
    serve(*deployments(params, cron=cron), limit=limit)
