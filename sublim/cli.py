"""The `sublim` command: run one step (what DVC stages call), run a whole pipeline, inspect results."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sublim import config
from sublim.plan import plan as make_plan

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]


def _load(params: Path) -> config.Config:
    try:
        return config.load(params)
    except config.ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def rich_progress(items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    """A progress bar on a terminal; silent otherwise (DVC and CI logs stay readable)."""
    if not console.is_terminal:
        yield from items
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console, transient=True) as bar:
        task = bar.add_task(desc, total=total)
        for item in items:
            yield item
            bar.advance(task)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    step: Annotated[str, typer.Argument(help="pipeline.step, e.g. mlp.teacher")],
    seed: Annotated[int | None, typer.Option()] = None,
    gen: Annotated[int | None, typer.Option(help="generation")] = None,
    variant: Annotated[str | None, typer.Option(help="e.g. shared/other init")] = None,
    teacher: Annotated[int | None, typer.Option(help="generation the data comes from (checked)")] = None,
    params: ParamsOpt = Path(config.PARAMS_FILE),
) -> None:
    """Run one job of a pipeline (this is what each DVC stage calls)."""
    from sublim.artifacts import ArtifactError
    from sublim.pipeline import run_dvc_stage

    cfg = _load(params)
    pipeline, _, short = step.partition(".")
    try:
        job = make_plan(cfg, pipeline).find(short, seed, gen, variant)
    except LookupError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    _check_link(cfg, pipeline, gen, teacher, ctx.args)
    root = params.resolve().parent
    try:
        outcome = run_dvc_stage(cfg, job, root, progress=rich_progress)
    except (ArtifactError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"{outcome.job_id}: {outcome.output} md5={outcome.digest}", highlight=False)
    if outcome.summary_markdown:
        Console().print(Markdown(outcome.summary_markdown))


def _check_link(cfg: config.Config, pipeline: str, gen: int | None, teacher: int | None, extra: list[str]) -> None:
    """dvc.yaml renders each generation's settings into the command (so DVC reruns only changed
    generations); they must agree with params.yaml, the single source of truth."""
    if gen is None or teacher is None:
        if extra:
            console.print(f"[red]error:[/red] unexpected arguments {' '.join(extra)}", highlight=False)
            raise typer.Exit(2)
        return
    link = getattr(cfg, pipeline).link(gen)
    if link.teacher != teacher:
        console.print(f"[red]error:[/red] --teacher {teacher} disagrees with params.yaml "
                      f"({pipeline}.generations: gen {gen} learns from {link.teacher})", highlight=False)
        raise typer.Exit(2)


@app.command()
def flow(
    pipeline: Annotated[str, typer.Argument(help="mlp, lm or all")] = "mlp",
    params: ParamsOpt = Path(config.PARAMS_FILE),
) -> None:
    """Run a whole pipeline as a Prefect flow (embedded Prefect server unless PREFECT_API_URL is set)."""
    cfg = _load(params)
    from flows.pipeline import build

    names = ["mlp", "lm"] if pipeline == "all" else [pipeline]
    for name in names:
        try:
            make_plan(cfg, name)  # an unknown pipeline is a clear error before the server starts
        except LookupError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
    for name in names:
        result = build(cfg)(pipeline=name, params=str(params))
        Console().print(Markdown(result.get("summary") or ""))
        if result["missing"]:
            raise typer.Exit(1)


@app.command()
def plan(
    pipeline: Annotated[str, typer.Argument()] = "mlp",
    params: ParamsOpt = Path(config.PARAMS_FILE),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the jobs params.yaml defines, in the order they run."""
    cfg = _load(params)
    jobs = make_plan(cfg, pipeline).jobs
    if as_json:
        print(json.dumps([{"id": j.id, "output": str(j.output), "inputs": [[n, str(p)] for n, p in j.inputs]}
                          for j in jobs], indent=1))
        return
    for job in jobs:
        print(f"{job.id:40s} -> {job.output}")


@app.command()
def check(params: ParamsOpt = Path(config.PARAMS_FILE)) -> None:
    """Validate params.yaml without running anything."""
    cfg = _load(params)
    console.print(f"{params}: ok (config digest {cfg.digest()[:12]})", highlight=False)


if __name__ == "__main__":
    app()
