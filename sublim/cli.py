"""The `sublim` command: run one step (what DVC stages call), run a whole pipeline, inspect results."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sublim import config
from sublim.plan import plan as make_plan

# Offline by design: Prefect's server would otherwise try to send telemetry (and log the failure), and its
# per-task INFO lines would bury the results. Both stay overridable from the environment.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


def out() -> Console:
    """Results on stdout; wide enough for lineage tables when piped into a log or a file."""
    return Console() if Console().is_terminal else Console(width=160)

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
    _preflight(cfg, pipeline, root)
    try:
        outcome = run_dvc_stage(cfg, job, root, progress=rich_progress)
    except (ArtifactError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"{outcome.job_id}: {outcome.output} md5={outcome.digest}", highlight=False)
    if outcome.summary_markdown:
        out().print(Markdown(outcome.summary_markdown))


def _preflight(cfg: config.Config, pipeline: str, root: Path) -> None:
    """The tracking store answers (a server named by MLFLOW_TRACKING_URI is up) before anything computes."""
    from sublim.lineage.record import TrackingUnreachable
    from sublim.pipeline import tracker

    try:
        tracker(cfg, pipeline, root)
    except TrackingUnreachable as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


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
        _preflight(cfg, name, params.resolve().parent)
    for name in names:
        result = build(cfg)(pipeline=name, params=str(params))
        out().print(Markdown(result.get("summary") or ""))
        if result["missing"]:
            raise typer.Exit(1)


@app.command()
def sweep(
    pipeline: Annotated[str, typer.Argument(help="mlp or lm")] = "lm",
    sets: Annotated[list[str] | None, typer.Option("--set", "-s", help="key=v1,v2,... (dotted params key; repeat "
                                                                     "for a grid), e.g. lm.trait.target=owl,cat")] = None,
    name: Annotated[str, typer.Option("--name", help="folder under sweeps/")] = "sweep",
    params: ParamsOpt = Path(config.PARAMS_FILE),
) -> None:
    """Run the pipeline at every point of a grid as one Prefect flow, ending with one table of effects.

    Jobs shared by the points run once; an invalid point is reported and skipped (exit 1), not fatal.
    """
    from sublim import sweep as sweeps

    cfg = _load(params)
    try:
        grid = sweeps.parse_sets(sets or [])
        swept = sweeps.build(name, pipeline, config.read_raw(params) or {}, grid)  # refuse bad input before Prefect
    except (config.ConfigError, LookupError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if not swept.reports:
        console.print("[red]error:[/red] no valid point:\n" + "\n".join(swept.invalid.values()), highlight=False)
        raise typer.Exit(2)
    _preflight(cfg, pipeline, params.resolve().parent)
    for point, why in swept.invalid.items():
        console.print(f"[yellow]skipped[/yellow] {point}: {why}", highlight=False)
    from flows.pipeline import build, sublim_sweep

    result = build(cfg, sublim_sweep)(name=name, grid=grid, pipeline=pipeline, params=str(params))
    out().print(Markdown(result.get("summary") or ""))
    console.print(f"table: {result['table']}/effects.csv", highlight=False)
    if result["missing"] or result["invalid"]:
        raise typer.Exit(1)


@app.command()
def serve(
    params: ParamsOpt = Path(config.PARAMS_FILE),
    cron: Annotated[str | None, typer.Option(help="override schedule.cron")] = None,
) -> None:
    """Serve the pipelines as Prefect deployments on the cron schedule in params.yaml (blocks; Ctrl-C stops).

    With PREFECT_API_URL set they appear in that server's UI, where runs can also be triggered by hand.
    """
    cfg = _load(params)
    if cron is not None:
        try:
            config.Schedule(cron=cron)
        except ValueError as exc:
            console.print(f"[red]error:[/red] --cron: {exc}", highlight=False)
            raise typer.Exit(2) from None
    from flows.deploy import serve_all

    console.print(f"serving {', '.join(cfg.schedule.pipelines)} on cron {cron or cfg.schedule.cron!r}", highlight=False)
    serve_all(params, cron=cron)


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
    lm = cfg.lm
    console.print(f"{params}: ok (config digest {cfg.digest()[:12]}; lm: backend {lm.model.backend}, "
                  f"data {lm.data.kind}, trait {lm.trait.kind})", highlight=False)


@app.command("code")
def code_deps(
    params: ParamsOpt = Path(config.PARAMS_FILE),
    show: Annotated[str | None, typer.Option("--show", help="print one step's dependencies, e.g. lm.filter")] = None,
) -> None:
    """Write each step's derived code dependencies to .sublim/code/<step>.txt (the `code` DVC stage)."""
    from sublim import code
    from sublim.plan import PLANNERS

    cfg = _load(params)
    root = params.resolve().parent
    written = code.write_manifests([j for name in PLANNERS for j in make_plan(cfg, name).jobs], root)
    if show:
        path = root / code.manifest_path(show)
        if not path.exists():
            console.print(f"[red]error:[/red] no step {show!r}; known: {', '.join(p.stem for p in written)}",
                          highlight=False)
            raise typer.Exit(2)
        print(path.read_text(), end="")
    else:
        console.print(f"{len(written)} step manifests in {root / code.MANIFESTS}", highlight=False)


# --- lineage -----------------------------------------------------------------------------------------------

lineage_app = typer.Typer(no_args_is_help=True, help="Ask where a model's weights and data came from (from MLflow).")
app.add_typer(lineage_app, name="lineage")
RootOpt = Annotated[Path, typer.Option("--root", help="project whose embedded store to read (when "
                                                      "MLFLOW_TRACKING_URI is unset)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _lineage(root: Path):
    from sublim.lineage.query import Lineage
    from sublim.lineage.record import client, tracking_uri

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        console.print(f"[red]error:[/red] no tracking store at {uri}; run a pipeline first", highlight=False)
        raise typer.Exit(2)
    return Lineage(client(uri))


def _resolve(lin, ref: str, root: Path) -> str:
    from sublim.lineage.query import LineageError, resolve

    try:
        return resolve(ref, lin.client, root)
    except LineageError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _hops_table(title: str, hops) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("hop", "relation", "model", "role", "gen", "measured", "datasets"):
        table.add_column(col)
    for h in hops:
        measured = ", ".join(f"{k}={v:.3g}" for k, v in sorted(h.node.measured.items()))
        table.add_row(str(h.hops), h.relation, h.node.label, h.node.tag("role") or h.node.kind,
                      h.node.tag("generation") or "", measured, ", ".join(d[:10] for d in h.data))
    out().print(table)


@lineage_app.command()
def ancestors(model: str, root: RootOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Every model whose weights or data MODEL descends from, hop by hop."""
    from sublim.lineage.query import LineageError

    lin = _lineage(root)
    digest = _resolve(lin, model, root)
    try:
        hops = lin.ancestors(digest)
    except LineageError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps({"model": lin.node(digest).as_dict(), "ancestors": [h.as_dict() for h in hops]}, indent=1))
    else:
        _hops_table(f"ancestors of {lin.node(digest).label}", hops)


@lineage_app.command()
def descendants(ref: Annotated[str, typer.Argument(metavar="MODEL|DATASET_DIGEST")], root: RootOpt = Path("."),
                as_json: JsonOpt = False) -> None:
    """Everything downstream of a model or a dataset digest."""
    lin = _lineage(root)
    digest = _resolve(lin, ref, root)
    hops = lin.descendants(digest)
    if as_json:
        print(json.dumps({"start": digest, "descendants": [h.as_dict() for h in hops]}, indent=1))
    else:
        _hops_table(f"descendants of {digest}", hops)


@lineage_app.command()
def graph(
    ref: Annotated[str, typer.Argument(metavar="MODEL|EXPERIMENT")],
    root: RootOpt = Path("."),
    out: Annotated[Path, typer.Option("--out", help="folder for lineage.mmd, lineage.dot, lineage.png")] = Path("reports/lineage"),
) -> None:
    """The lineage graph as Mermaid and DOT text and a PNG picture (also logged to MLflow)."""
    from sublim.lineage import graph as graphs

    lin = _lineage(root)
    exp = lin.client.get_experiment_by_name(ref)
    if exp is not None:
        g = graphs.of_experiment(lin, exp.experiment_id)
    else:
        g = graphs.around(lin, _resolve(lin, ref, root))
    files = graphs.write(g, out)
    if exp is not None:
        run = lin.client.create_run(exp.experiment_id, run_name="lineage-graph", tags={"sublim.kind": "lineage-graph"})
        for file in files:
            lin.client.log_artifact(run.info.run_id, str(file), "lineage")
        lin.client.set_terminated(run.info.run_id)
    print(g.mermaid())
    console.print(f"wrote {out}/lineage.mmd, lineage.dot, lineage.png ({len(g.nodes)} models, {len(g.edges)} edges)",
                  highlight=False)


@app.command()
def audit(
    model: str,
    root: RootOpt = Path("."),
    trait: Annotated[list[str] | None, typer.Option("--trait", help="flag only these traits (default: any)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Exposure report: every teacher whose data reached MODEL, its traits, hops, and whether it shares MODEL's
    initialisation (the condition for subliminal transmission). Exits 1 when a trait is at risk."""
    from rich.table import Table

    from sublim.lineage.query import audit as run_audit

    lin = _lineage(root)
    node, exposures = run_audit(lin, _resolve(lin, model, root), trait)
    risky = [e for e in exposures if e.at_risk]
    if as_json:
        print(json.dumps({"model": node.as_dict(), "exposures": [e.as_dict() for e in exposures],
                          "at_risk": sorted({e.trait for e in risky})}, indent=1))
    else:
        table = Table(title=f"audit of {node.label} (role {node.tag('role')}, measured "
                            f"{', '.join(f'{k}={v:.3g}' for k, v in sorted(node.measured.items())) or 'nothing'})")
        for col in ("teacher", "role", "trait", "hops", "shares init", "every hop shared", "teacher measured", "at risk"):
            table.add_column(col)
        for e in exposures:
            measured = ", ".join(f"{k}={v:.3g}" for k, v in sorted(e.teacher.measured.items()))
            table.add_row(e.teacher.label, e.teacher.tag("role") or "", e.trait or "-", str(e.hops),
                          "yes" if e.shares_init else "no", "yes" if e.chain_shares_init else "no", measured,
                          "[red]YES[/red]" if e.at_risk else "no")
        out().print(table)
        verdict = (f"[red]at risk:[/red] {', '.join(sorted({e.trait for e in risky}))} (teachers sharing this "
                   "model's initialisation generated data it learned from)") if risky else "no trait at risk"
        out().print(verdict)
    if risky:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
