"""Scheduled runs: serve the pipelines as Prefect deployments on the cron schedule in params.yaml.

`sublim serve` (or `make serve`) registers one deployment per pipeline with the parameters of params.yaml and
serves them from this process; the same deployments can run on a process work pool instead (prefect.yaml +
`prefect worker start --pool sublim`). Point PREFECT_API_URL at a `prefect server start` to see them in its UI.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, serve
from prefect.states import State

from flows.pipeline import build, final, outcome_of
from sublim import config


@flow(name="sublim-scheduled", log_prints=True)
def scheduled_pipeline(pipeline: str = "mlp", params: str = config.PARAMS_FILE) -> dict | State:
    """prefect.yaml's entrypoint: the pipeline as a subflow built from `params`, so a work-pool run uses the
    task runner and workers its runtime section asks for (the bare `sublim_pipeline` entrypoint ran every
    ready job at once in threads, whatever params.yaml said). Failed, with the subflow's message, when jobs did
    not finish."""
    return final(outcome_of(build(config.load(params))(pipeline=pipeline, params=params, return_state=True)))


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
