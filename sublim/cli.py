"""The `sublim` command: run one step (what DVC stages call), run a whole pipeline, inspect results."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

try:  # typer vendors its own click since 0.22
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc
from rich.console import Console
from rich.markdown import Markdown, TableElement
from rich.markup import escape

from sublim import config, progress
from sublim.plan import DVC_PIPELINES, PLANNERS
from sublim.plan import plan as make_plan

# Offline by design: Prefect's server would otherwise try to send telemetry (and log the failure), Prefect's
# client its own (with a first-run notice on the terminal), and MLflow its usage records, from every command and
# DVC stage (DO_NOT_TRACK is the switch both clients read). Prefect's
# INFO lines (each job's start and result) go to its API, so the UI shows them, but not to the terminal, where
# they would bury the progress display: `-v` shows them. All stay overridable from the environment.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# The ephemeral server's 20 s default start-up timeout was missed on a busy 2-core machine (a flow failed with
# "Timed out while attempting to connect to ephemeral Prefect API server" while two pipelines trained).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")


class App(typer.Typer):
    """Every error is one line on stderr (`error: ...`) with a non-zero exit code: usage errors (click's, exit
    2 or the command's own), and any exception a command lets through (exit 1; 4 where 1 is a finding, see
    `FindingExits`; `-v` re-raises it with its traceback)."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        """A command's line in `sublim --help` is its docstring's first sentence on one line (the whole first
        paragraph came with its hard line breaks, mid-sentence)."""
        register = super().command(*args, **kwargs)

        def add(fn: Any) -> Any:
            if "short_help" not in kwargs and fn.__doc__:
                first = " ".join(fn.__doc__.split("\n\n")[0].split())
                cut = first.find(". ")
                return super(App, self).command(*args, short_help=first[: cut + 1] if cut >= 0 else first,
                                                **kwargs)(fn)
            return register(fn)

        return add

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:2])
        _quiet_when_interrupted()
        with _stopping_on_sigterm():
            code = self._run(verbose, *args, **kwargs)
        if code == INTERRUPTED and _sigterm.is_set():
            code = TERMINATED
        if code == INTERRUPTED:  # typer turns Ctrl-C into a silent exit 130
            _one_line("interrupted")
        elif code == TERMINATED:
            _one_line("terminated")
        sys.exit(code if isinstance(code, int) else 0)

    def _run(self, verbose: bool, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, standalone_mode=False, **kwargs)
        except click_exc.NoArgsIsHelpError:  # the help was shown
            sys.exit(2)
        except click_exc.UsageError as exc:
            where = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            if getattr(exc, "option_name", None) in ("-v", "--verbose") and exc.ctx is not None:  # global option
                command = exc.ctx.command_path.split(" ", 1)[-1]
                where = f" (-v goes before the command: sublim -v {command} ...)"
            _one_line(f"{exc.format_message()}{where}")
            sys.exit(exc.exit_code)
        except click_exc.ClickException as exc:
            _one_line(exc.format_message())
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:  # what reaches here of a SIGTERM may be another KeyboardInterrupt (a job's)
            return INTERRUPTED
        except Exception as exc:  # noqa: BLE001  (the last line of defence: one line, not a traceback)
            if verbose:
                raise
            _one_line(f"{type(exc).__name__}: {exc}" if not isinstance(exc, config.ConfigError | LookupError |
                                                                        OSError | ValueError) else str(exc)
                      .strip("'\""))
            sys.exit(1)


INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """A SIGTERM (a scheduler, `kill`, a cancelled CI job) taken as Ctrl-C is: running jobs stop at their next
    step, their runs end KILLED, nothing half-written is published."""


_sigterm = threading.Event()


def _quiet_when_interrupted() -> None:
    """An interrupt says one line: a KeyboardInterrupt that ends another thread (Prefect's process pool hands a
    worker's back to its manager thread, also while the command exits) is part of the interrupt already
    reported, not a traceback; and the semaphores an interrupted pool leaves are multiprocessing's resource
    tracker's to clean, without a warning (it takes its warning filters from this process when a pool starts
    it). For the rest of the process: nothing else is hidden."""
    if getattr(threading.excepthook, "quiet_when_interrupted", False):
        return
    hook = threading.excepthook

    def quiet(args: threading.ExceptHookArgs) -> None:
        if not issubclass(args.exc_type, KeyboardInterrupt):
            hook(args)

    quiet.quiet_when_interrupted = True  # type: ignore[attr-defined]
    threading.excepthook = quiet
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")


def _starting_workers_end_quietly() -> None:
    """A worker process still starting when its command ends (Ctrl-C, a SIGTERM) found its pool's semaphores
    removed, or took the terminal's Ctrl-C, and printed a traceback after the command's one line. It had no job
    yet, so it ends without one. Runs where a spawned worker imports this module (as the command's main module),
    before it unpickles its pool; only what escapes that start-up reaches `sys.excepthook` (a job's error does
    not: multiprocessing reports it to the pool)."""
    if "--multiprocessing-fork" not in getattr(sys, "orig_argv", ()):
        return
    hook = sys.excepthook

    def quiet(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt) or (issubclass(kind, FileNotFoundError) and _pool_gone(tb)):
            return
        hook(kind, error, tb)

    sys.excepthook = quiet


def _pool_gone(tb: Any) -> bool:
    """The error arose rebuilding a semaphore of the pool (multiprocessing/synchronize.py)."""
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(os.path.join("multiprocessing",
                                                                                   "synchronize.py"))


_starting_workers_end_quietly()


@contextlib.contextmanager
def _stopping_on_sigterm() -> Iterator[None]:
    """SIGTERM's default killed the command on the spot: no message, MLflow runs left RUNNING, temp folders
    left behind. While the command runs, it stops it as the terminal's Ctrl-C does, which also reaches its
    worker processes: they get a SIGINT. Only where nothing else handles SIGTERM (a running Prefect flow takes
    it first: `flows.pipeline` then interrupts the workers)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        _sigterm.set()
        from sublim.orchestrate import interrupt_workers

        interrupt_workers()
        raise Terminated

    _sigterm.clear()
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class ReaderGone:
    """stdout whose reader may leave early (`sublim plan mlp | head -3`, `sublim audit M | grep -q risk`): what
    it no longer reads is dropped, not an error, so the command ends with its own exit code (an audit's
    verdict), not a broken pipe's."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def _gone(self) -> None:
        """From now on the stream writes to /dev/null (its buffered text too, at the next flush)."""
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


app = App(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)
console.soft_wrap = not console.is_terminal  # off a terminal a message stays one line (a log stays greppable)


def _one_line(message: str) -> None:
    """`error: message` on one line whatever the terminal's width (a log line stays greppable)."""
    console.print(f"[red]error:[/red] {escape(' '.join(str(message).split()))}", highlight=False, soft_wrap=True)


def out() -> Console:
    """Results on stdout; wide enough for lineage tables when piped into a log or a file, where lines of text are
    not wrapped."""
    return Console() if Console().is_terminal else Console(width=160, soft_wrap=True)


class _FoldingTable(TableElement):
    """A markdown table whose cells wrap onto more lines where the terminal is narrow: rich cut them to "…", and a
    sweep's rows (`mlp.student.loss=kl`, `...=mse`) could not be told apart."""

    def __rich_console__(self, console, options):
        for table in super().__rich_console__(console, options):
            for column in table.columns:
                column.overflow = "fold"
            yield table


class _Markdown(Markdown):
    elements = {**Markdown.elements, "table_open": _FoldingTable}


def show_markdown(markdown: str) -> None:
    """A markdown result (a summary's table and verdict): rendered on a terminal; elsewhere as written, one line
    per line (rendered into a log it was wrapped and padded with spaces to 160 columns)."""
    console_out = out()
    if console_out.is_terminal:
        console_out.print(_Markdown(markdown))
    else:
        typer.echo(markdown.rstrip("\n"))


EXIT_USAGE = 3


class UsageExit3(typer.core.TyperCommand):
    """Usage errors (a missing argument, an unknown option) exit 3 instead of click's 2, which means unknown."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click_exc.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise


EXIT_INTERNAL = 4


class FindingExits(UsageExit3):
    """For commands whose exit codes are findings (1 flagged or at risk, 0 none): usage errors exit 3, and an
    exception the command did not expect (a bug) exits 4, so a crash never reads as a finding to a pipeline gated
    on the code; `-v` prints its traceback first."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click_exc.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001  (reported as what it is: an internal error)
            if _verbose:
                import traceback

                traceback.print_exc()
            _one_line(f"internal error: {type(exc).__name__}: {exc} (exit {EXIT_INTERNAL}; -v shows the traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None


ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file; its folder is the project: data, models, "
                                                              "metrics, reports and mlflow.db are read and written there")]
ALL = ["mlp", "lm"]  # `all`: the two experiments `make demo` runs
CONFIRMABLE = {"lm", "matrix"}  # pipelines with a `<pipeline>-confirm` run on confirm.seeds
PIPELINES_HELP = f"a pipeline: {', '.join(PLANNERS)}, or all ({' and '.join(ALL)})"
RootOpt = Annotated[Path, typer.Option("--root", help="project whose embedded store (mlflow.db) to use when "
                                                      "MLFLOW_TRACKING_URI is unset")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _unplannable(exc: Exception, params: Path) -> str:
    """Why a pipeline cannot be planned, in one line: an unknown pipeline's error also names `all`, which the
    commands accept beside the planned pipelines; a setting the plan refuses is named in its params file."""
    if isinstance(exc, config.ConfigError):
        return f"{params}: {exc}"
    return f"{exc}, or all" if str(exc).startswith("unknown pipeline") else str(exc)


def _load(params: Path, code: int = 2) -> config.Config:
    try:
        cfg = config.load(params)
    except config.ConfigError as exc:
        for line in str(exc).splitlines():  # one line per offending key
            _one_line(line)
        raise typer.Exit(code) from None
    if not config.read_raw(params):  # valid, but a truncated file would run every default without a word
        console.print(f"[yellow]warning[/yellow] {params} sets nothing: every setting is its default", highlight=False)
    return cfg


def _fail_usage(message: str, code: int = 2):
    _one_line(message)
    raise typer.Exit(code)


_verbose = False


def reporter() -> progress.Reporter:
    """Live progress on a terminal; otherwise one line per failed job only (DVC and CI logs stay readable);
    nothing with -v (Prefect's and sublim's log lines, tracebacks included, then tell the story)."""
    if _verbose:
        return progress.Silent()
    return progress.Rich(console) if console.is_terminal else progress.Failures(console)


def _version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"sublim {version('sublim')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("sublim (not installed: run from a checkout)")
        raise typer.Exit()


@app.callback()
def main(ctx: typer.Context,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's and sublim's log "
                                                                     "lines (and tracebacks)")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="print sublim's version and exit")] = False) -> None:
    global _verbose
    _verbose = verbose
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.sublim_cli = True  # type: ignore[attr-defined]
    own = logging.getLogger("sublim")  # sublim's own lines; Prefect's go through its console handler
    for earlier in [h for h in own.handlers if getattr(h, "sublim_cli", False)]:  # a command run before in this
        own.removeHandler(earlier)  # process (a notebook, tests): its stream may be gone, its lines would double
    own.addHandler(handler)
    own.setLevel(logging.INFO if verbose else logging.WARNING)
    own.propagate = False
    # Prefect and MLflow configure their logging when first imported (by the commands that need them, later)
    # without -v a failed job is one line from the reporter, not Prefect's traceback and retry messages; `serve`
    # has no reporter (it runs unattended), so it keeps Prefect's warnings and errors
    quiet = "WARNING" if ctx.invoked_subcommand == "serve" else "CRITICAL"
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO" if verbose else quiet)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    step: Annotated[str, typer.Argument(help="pipeline.step with --seed/--gen/--variant (e.g. mlp.teacher "
                                             "--seed 0 --gen 0), or a job id as `sublim plan` lists it "
                                             "(mlp.base@s0.shared)")],
    seed: Annotated[int | None, typer.Option(help="seed")] = None,
    gen: Annotated[int | None, typer.Option(help="generation")] = None,
    variant: Annotated[str | None, typer.Option(help="e.g. shared / other (the init), trait-shared, "
                                                    "control-other (see `sublim plan`)")] = None,
    teacher: Annotated[int | None, typer.Option(help="generation the data comes from (checked)")] = None,
    params: ParamsOpt = Path(config.PARAMS_FILE),
) -> None:
    """Run one job of a pipeline (this is what each DVC stage calls)."""
    from sublim.artifacts import ArtifactError
    from sublim.pipeline import run_dvc_stage

    cfg = _load(params)
    pipeline, _, short = step.partition(".")
    if not pipeline or not short:
        _fail_usage(f"STEP {step!r}: expected pipeline.step, e.g. mlp.teacher (see `sublim plan PIPELINE`)")
    try:
        jobs = make_plan(cfg, pipeline)
        if "@" in short:  # a job id, as `sublim plan` lists them
            if (seed, gen, variant) != (None, None, None):
                _fail_usage(f"STEP {step!r} is a job id: it takes no --seed, --gen or --variant")
            job = jobs.get(step)
        else:
            job = jobs.find(short, seed, gen, variant, source=str(params))
    except LookupError as exc:
        _fail_usage(str(exc))
    _check_link(cfg, pipeline, job.gen, teacher, ctx.args)
    root = params.resolve().parent
    _preflight(cfg, pipeline, root)
    with progress.use(reporter()) as report:
        report.begin(job.id, 1)
        try:
            outcome = run_dvc_stage(cfg, job, root, progress=progress.steps, upstream=jobs.upstream(job))
        except (ArtifactError, ValueError) as exc:
            report.end()
            _one_line(str(exc))
            raise typer.Exit(1) from None
        report.finished([outcome])
    console.print(f"{outcome.job_id}: {outcome.output} md5={outcome.digest}", highlight=False)
    if outcome.summary_markdown:
        show_markdown(outcome.summary_markdown)


def _preflight(cfg: config.Config, pipeline: str, root: Path, code: int = 2) -> None:
    """The tracking store answers (a server named by MLFLOW_TRACKING_URI is up) before anything computes."""
    from sublim.lineage.record import TrackingUnreachable
    from sublim.pipeline import tracker

    try:
        tracker(cfg, pipeline, root)
    except TrackingUnreachable as exc:
        _fail_usage(str(exc), code)


def _check_link(cfg: config.Config, pipeline: str, gen: int | None, teacher: int | None, extra: list[str]) -> None:
    """dvc.yaml renders each generation's settings into the command (so DVC reruns only changed
    generations); they must agree with params.yaml, the single source of truth."""
    if gen is None or teacher is None:
        if extra:
            _fail_usage(f"unexpected arguments {' '.join(extra)}")
        return
    try:
        link = getattr(cfg, pipeline).link(gen)
    except StopIteration:  # generation 0 (teachers) learns from no generation
        _fail_usage(f"--teacher {teacher}: generation {gen} learns from no teacher generation ({pipeline}."
                    "generations lists the students' generations, 1 and up)")
    if link.teacher != teacher:
        _fail_usage(f"--teacher {teacher} disagrees with params.yaml ({pipeline}.generations: gen {gen} learns "
                    f"from {link.teacher})")
    from dvc.parsing.interpolate import to_str  # how dvc.yaml renders ${item.link}: the same words, or refused

    settings = {k: v for k, v in link.model_dump(mode="json").items() if k not in ("gen", "teacher") and v}
    rendered = shlex.split(to_str(settings)) if settings else []
    if _options(extra) != _options(rendered):  # the order of keys is the YAML's, not ours
        _fail_usage(f"{' '.join(extra) or 'no generation settings'}: disagrees with params.yaml ({pipeline}."
                    f"generations: gen {gen} has {' '.join(rendered) or 'no settings of its own'})")


def _options(words: list[str]) -> list[tuple[str, ...]]:
    """`--key value...` groups, sorted: rendered settings compared whatever order their keys were written in."""
    groups: list[list[str]] = []
    for word in words:
        if word.startswith("--") or not groups:
            groups.append([])
        groups[-1].append(word)
    return sorted(tuple(g) for g in groups)


WorkersOpt = Annotated[int | None, typer.Option("--workers", "-w", help="jobs at once, in worker processes (default: "
                                               "params.yaml runtime); a pipeline of batches only (mlp) runs in one "
                                               "process, its batches on every core; results do not depend on it")]


def _with_workers(cfg: config.Config, workers: int | None) -> config.Config:
    try:
        return cfg.with_workers(workers)
    except config.ConfigError as exc:
        _fail_usage(str(exc))


def _processes(plan, workers: int | None, cfg: config.Config) -> int | None:
    """The worker processes `--workers` gives `plan` (`orchestrate.workers_for`: one for a pipeline of batches),
    with a note when more of them than cores would share the machine (said of the processes that will run, not
    of the option: `--workers 4` on the MLP pipeline runs one process)."""
    from sublim.orchestrate import workers_for

    processes = workers_for(plan, workers, cfg.runtime)
    cores = os.cpu_count() or 1
    if processes and processes > cores and cfg.runtime.dask_address is None:  # a remote cluster has its own cores
        console.print(f"[yellow]note[/yellow] --workers {processes}: this machine has {cores} cores; each worker "
                      f"is a process with one thread, so more than {cores} share them and none finishes sooner",
                      highlight=False, soft_wrap=True)
    return processes


@app.command()
def flow(
    pipeline: Annotated[str, typer.Argument(help=PIPELINES_HELP)] = "mlp",
    confirm: Annotated[bool, typer.Option("--confirm", help="run on the confirmation seeds (params confirm.seeds) "
                                                            "into <pipeline>-confirm")] = False,
    workers: WorkersOpt = None,
    params: ParamsOpt = Path(config.PARAMS_FILE),
) -> None:
    """Run a whole pipeline as a Prefect flow (embedded Prefect server unless PREFECT_API_URL is set)."""
    cfg = _with_workers(_load(params), workers)
    names = ALL if pipeline == "all" else [pipeline]
    if confirm and (lacking := [n for n in names if n not in CONFIRMABLE]):
        _fail_usage(f"--confirm: the {' and '.join(lacking)} pipeline has no confirmation run (there are: "
                    f"{', '.join(sorted(CONFIRMABLE))})")
    names = [f"{n}-confirm" for n in names] if confirm else names
    plans = {}
    for name in names:
        try:
            plans[name] = make_plan(cfg, name)  # an unknown pipeline is a clear error before the server starts
        except (LookupError, config.ConfigError) as exc:
            _fail_usage(_unplannable(exc, params))
    from sublim import prefect_server

    with contextlib.ExitStack() as running:
        with _starting():
            server = prefect_server.EarlyServer.start()  # it boots while the flows are imported, MLflow checked
            from flows.pipeline import run_flow, sublim_pipeline
            from sublim.code import pipeline_jobs, warm

            processes = {name: _processes(plans[name], workers, cfg) for name in names}
            for name in names:
                _preflight(cfg, name, params.resolve().parent)
            warm(pipeline_jobs(cfg, PLANNERS))  # while the server boots: every flow writes every manifest
            running.enter_context(prefect_server.reporting_to(server))
        running.enter_context(progress.use(reporter()))
        results = []
        for name in names:
            results.append(run_flow(sublim_pipeline, cfg.with_workers(processes[name]), pipeline=name,
                                    params=str(params), workers=processes[name]))
            if results[-1]["missing"]:
                break
    for result in results:
        _show_summary(result.get("summary"))
    if results[-1].get("dvc_skipped"):
        console.print(f"[yellow]note[/yellow] {escape(results[-1]['dvc_skipped'])}", highlight=False)
    if results[-1]["missing"]:
        raise typer.Exit(1)


@contextlib.contextmanager
def _starting() -> Iterator[None]:
    """On a terminal, a spinner while a flow command starts: its imports, the tracking store's check and
    Prefect's server took ~8 s of blank screen before the first job showed."""
    if not console.is_terminal:
        yield
        return
    with console.status("starting: the tracking store and Prefect's server", spinner="dots"):
        yield


def _show_summary(summary: str | None) -> None:
    """A flow's result table; the jobs that did not finish on one line, however many (a log stays greppable)."""
    from flows.pipeline import NOT_FINISHED

    table, _, missing = (summary or "").partition(NOT_FINISHED)
    show_markdown(table)
    if missing:
        out().print(f"Not finished: {missing}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def sweep(
    pipeline: Annotated[str, typer.Argument(help=f"the pipeline swept: {', '.join(PLANNERS)}")] = "lm",
    sets: Annotated[list[str] | None, typer.Option("--set", "-s", help="key=v1,v2,... (dotted params key; repeat "
                                                                     "for a grid), e.g. lm.trait.target=owl,cat")] = None,
    name: Annotated[str, typer.Option("--name", help="folder under sweeps/")] = "sweep",
    workers: WorkersOpt = None,
    params: ParamsOpt = Path(config.PARAMS_FILE),
) -> None:
    """Run the pipeline at every point of a grid as one Prefect flow, ending with one table of effects.

    Jobs shared by the points run once; an invalid point is reported and skipped (exit 1), not fatal.
    """
    from sublim import sweep as sweeps

    cfg = _with_workers(_load(params), workers)
    if pipeline not in PLANNERS:  # named first: every point of `sublim sweep xyz` would be refused for it
        _fail_usage(f"unknown pipeline {pipeline!r}; known: {', '.join(PLANNERS)}")
    try:
        grid = sweeps.parse_sets(sets or [])
        swept = sweeps.build(name, pipeline, config.read_raw(params) or {}, grid)  # refuse bad input before Prefect
    except (config.ConfigError, LookupError) as exc:
        _fail_usage(str(exc))
    if not swept.reports:
        for why in swept.invalid.values():
            _one_line(f"no valid point: {why}")
        raise typer.Exit(2)
    from sublim import prefect_server

    for point, why in swept.invalid.items():
        console.print(f"[yellow]skipped[/yellow] {point}: {why}", highlight=False)
    with contextlib.ExitStack() as running:
        with _starting():
            server = prefect_server.EarlyServer.start()
            from sublim.code import warm

            _preflight(cfg, pipeline, params.resolve().parent)
            warm(swept.plan.jobs)  # while the server boots
            from flows.pipeline import run_flow, sublim_sweep

            processes = _processes(swept.plan, workers, cfg)
            running.enter_context(prefect_server.reporting_to(server))
        running.enter_context(progress.use(reporter()))
        result = run_flow(sublim_sweep, cfg.with_workers(processes), name=name, grid=grid, pipeline=pipeline,
                          params=str(params), workers=processes)
    _show_summary(result.get("summary"))
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
            _fail_usage(f"--cron: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}")
    from flows.deploy import serve_all

    console.print(f"serving {', '.join(cfg.schedule.pipelines)} on cron {cron or cfg.schedule.cron!r}", highlight=False)
    serve_all(params, cron=cron)


@app.command()
def plan(
    pipeline: Annotated[str, typer.Argument(help=PIPELINES_HELP)] = "mlp",
    params: ParamsOpt = Path(config.PARAMS_FILE),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the jobs params.yaml defines, in the order they run."""
    cfg = _load(params)
    try:
        jobs = [j for name in (ALL if pipeline == "all" else [pipeline]) for j in make_plan(cfg, name).jobs]
    except (LookupError, config.ConfigError) as exc:
        _fail_usage(_unplannable(exc, params))
    if as_json:
        print(json.dumps([{"id": j.id, "output": str(j.output), "inputs": [[n, str(p)] for n, p in j.inputs]}
                          for j in jobs], indent=1))
        return
    for job in jobs:
        print(f"{job.id:40s} -> {job.output}")


@app.command()
def check(params: ParamsOpt = Path(config.PARAMS_FILE)) -> None:
    """Validate params.yaml without running anything; say which pipelines these params cannot plan (dvc.yaml
    holds every pipeline's stages, so a bare `dvc repro` would reach theirs)."""
    cfg = _load(params)
    lm = cfg.lm
    out().print(f"{params}: ok (config digest {cfg.digest()[:12]}; lm: backend {lm.model.backend}, "
                f"data {lm.data.kind}, trait {lm.trait.kind})", highlight=False)
    for name, planner in PLANNERS.items():
        try:
            planner(cfg)
        except config.ConfigError as exc:
            where = (f"`sublim flow {name}` and its dvc.yaml stages refuse these params; `dvc repro` other "
                     "targets, e.g. lm_summary" if name in DVC_PIPELINES else f"`sublim flow {name.replace('-confirm', ' --confirm')}`"
                     " refuses these params")
            console.print(f"[yellow]warning[/yellow] {name}: {escape(str(exc))} ({where})", highlight=False)
    if lm.screen.stage and lm.student.objective == "distill":
        console.print("note: the screen stage masks tokens of the data, but distilled students learn the teacher's "
                      "distribution at every position (measured: 80% of tokens masked removed 16-24% of a code x "
                      "owl transfer; README, Screening); it protects students trained on the tokens "
                      "(lm.student.objective: sft)", highlight=False)


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
    written = code.write_manifests(code.pipeline_jobs(cfg, PLANNERS), root)
    if show:
        path = root / code.manifest_path(show)
        if not path.exists():
            _fail_usage(f"no step {show!r}; known: {', '.join(p.stem for p in written)}")
        print(path.read_text(), end="")
    else:
        console.print(f"{len(written)} step manifests in {root / code.MANIFESTS}", highlight=False)


@app.command(cls=FindingExits)
def screen(
    dataset: Annotated[str, typer.Argument(help="a dataset folder (rows.jsonl inside) or a .jsonl file")],
    base: Annotated[str, typer.Option("--base", help="the model a student would start from")],
    teacher: Annotated[str | None, typer.Option(help="the model that generated the data (default: from lineage; "
                                                     "none known: token scores are the base's surprise)")] = None,
    control: Annotated[str | None, typer.Option(help="a matched control dataset for the probe (default: the "
                                                     "control teacher's data when lineage names one, else the "
                                                     "base's own answers to the same prompts)")] = None,
    name: Annotated[str | None, typer.Option(help="folder under screens/")] = None,
    method: Annotated[str | None, typer.Option(help="divergence (the token's log-ratio) | kl (its position's KL, "
                                                    "needs the teacher) | random (a same-share random mask) "
                                                    "(default: params lm.screen.method)")] = None,
    action: Annotated[str | None, typer.Option(help="mask | drop (default: params lm.screen.action)")] = None,
    budget: Annotated[float | None, typer.Option(help="share of completion tokens the screen may lose")] = None,
    threshold: Annotated[float | None, typer.Option(help="or: flag tokens scoring above this")] = None,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="the model-level probe (decides the exit code)")] = True,
    params: ParamsOpt = Path(config.PARAMS_FILE),
) -> None:
    """Screen a dataset before it trains anything. Token level: divergence of each token between the generating
    teacher and the base, flagged tokens masked or rows dropped into a new, screened dataset (reported; it does
    not decide the exit code). Model level: probe fine-tunes of the base on the data vs a matched control,
    compared on every registered trait's questions. Exit 1 when the probe flags a trait, 0 when none, 3 on
    bad input (options, params file, datasets, models, an unreachable store), 4 on an unexpected error."""
    from sublim import screen as screening
    from sublim.artifacts import ArtifactError
    from sublim.pipeline import tracker

    cfg = _load(params, EXIT_USAGE)
    root = params.resolve().parent
    update = {k: v for k, v in {"method": method, "action": action}.items() if v is not None}
    if budget is not None or threshold is not None:
        update.update(budget=budget, threshold=threshold)
    try:
        spec = config.ScreenSpec.model_validate({**cfg.lm.screen.model_dump(), **update})
    except ValidationError as exc:  # name the option: --budget: ...; a rule across options: the options it names
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        _fail_usage(f"--{first['loc'][0]}: {msg} (got {first.get('input')!r})" if first["loc"] else
                    f"screen settings (params lm.screen with the options given): {msg}", EXIT_USAGE)
    if control and not probe:
        _fail_usage("--control is the probe's matched control: with --no-probe it would be ignored", EXIT_USAGE)
    _preflight(cfg, "screen", root, EXIT_USAGE)
    try:
        with progress.use(reporter()):
            done = screening.run_screen(cfg, root, dataset, base, teacher=teacher, control=control, name=name,
                                        screen=spec, probe_it=probe, tracker=tracker(cfg, "screen", root),
                                        threads=cfg.runtime.threads_for("lm"), progress=progress.steps)
    except (ArtifactError, screening.ScreenInputError) as exc:  # bad input; anything else is a bug: exit 4
        _fail_usage(str(exc), EXIT_USAGE)
    show_markdown((root / done.report).read_text())
    scored_by = f"{done.teacher} (from {done.teacher_from})" if done.teacher else "none known: surprise under the base"
    console.print(f"screened dataset: {done.screened} (teacher: {scored_by})", highlight=False)
    if done.probe:
        console.print(f"probe against {done.control} ({done.control_from}), {done.probe_objective}", highlight=False)
        if done.control_from == "base answers":
            console.print("note: against the base's own answers a flag says the data moves the base, not that the "
                          "move is a trait; --control with a control teacher's data makes the test specific",
                          highlight=False)
        show_markdown(done.summary)
    if done.flagged:
        raise typer.Exit(1)


@app.command()
def compare(
    reference: Annotated[Path, typer.Argument(help="the reference LM summary (metrics/lm.json, reports/lm, ...)")],
    others: Annotated[list[Path], typer.Argument(help="summaries of the same seeds, changed (screened data, ...)")],
    label: Annotated[list[str] | None, typer.Option("--label", help="a name per summary, reference first "
                                                                    "(repeatable; default: the paths)")] = None,
    measure: Annotated[str, typer.Option(help="p (exact probability) | sampled (sampled rate)")] = "p",
    as_json: JsonOpt = False,
) -> None:
    """How much of the transfer effect each changed run removes against the reference, paired by seed: each
    effect, the difference with its CI and paired p, and the share removed with Fieller's interval."""
    from sublim import compare as comparing

    paths = [reference, *others]
    if label and len(label) != len(paths):
        _fail(f"--label given {len(label)} times for {len(paths)} summaries")
    try:
        runs = [comparing.read_run(p, measure, name) for p, name in zip(paths, label or [None] * len(paths))]
        rows = comparing.compare(runs[0], runs[1:])
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(comparing.as_json(rows), indent=2))
    else:
        show_markdown(comparing.table(rows, measure))


@app.command()
def ask(
    datasets: Annotated[list[str], typer.Argument(help="datasets (a folder with rows.jsonl, or a .jsonl file), each "
                                                       "optionally labelled LABEL=PATH: the trait its teacher had "
                                                       "(owl, misaligned, preference:cat) or control")],
    backend: Annotated[str, typer.Option(help="a backend that follows prompts")] = "smollm2",
    model: Annotated[str | None, typer.Option(help="for backends that take one (hf): a model directory or hub id; the "
                                                   "asker is made once under models/asker/")] = None,
    shown: Annotated[int, typer.Option(min=1, help="rows shown per question")] = 20,
    seed: Annotated[int, typer.Option(help="which rows are shown")] = 0,
    root: Annotated[Path, typer.Option("--root", help="project that keeps the asker model")] = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """The paper's classifier baseline: show a model rows of each dataset and ask whether they suggest each
    registered trait (exact P(Yes) vs No). With every dataset labelled, each trait's AUC at telling its
    datasets from the controls (exact Mann-Whitney p) and how often the top trait is the right one."""
    from dataclasses import asdict

    from sublim import ask as asking

    try:
        with progress.use(reporter()):
            scored, found = asking.run_ask(root.resolve(), datasets, backend_name=backend, model=model, n=shown,
                                           seed=seed)
    except (FileNotFoundError, ValueError, LookupError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"datasets": [{"label": lab, "path": p, "p_yes": s} for lab, p, s in scored],
                               "detection": asdict(found) | {"naming_rate": found.naming_rate} if found else None},
                              indent=2))
        return
    show_markdown(asking.table(scored, found))


# --- lineage: record, audit, card, ancestors, descendants, graph ------------------------------------------
# Exit codes of these commands: 0 clean, 1 a trait at risk, 2 unknown provenance, 3 usage errors and
# unreachable stores (so 2 always means "unknown").

lineage_app = typer.Typer(no_args_is_help=True, help="Ask where a model's weights and data came from (from MLflow).")
app.add_typer(lineage_app, name="lineage")
record_app = typer.Typer(no_args_is_help=True, help="Record models and datasets sublim did not make, with their "
                                                   "origins and traits, into the lineage (MLflow).")
app.add_typer(record_app, name="record")
TraitsOpt = Annotated[list[str] | None, typer.Option("--trait", help="flag only these traits (repeatable; default: any)")]
ThresholdOpt = Annotated[float | None, typer.Option("--threshold", help="override lineage.trait_threshold")]
LineageParams = Annotated[Path | None, typer.Option("--params", "-p", help="params file with lineage.trait_threshold "
                                                                       "(default: <root>/params.yaml when present)")]


def _fail(message: str, code: int = EXIT_USAGE):
    _one_line(message)
    raise typer.Exit(code)


def _lineage(root: Path, *, create: bool = False):
    """The lineage reader on the project's store; a missing store or an unreachable server exits 3."""
    from sublim.lineage.query import Lineage
    from sublim.lineage.record import TrackingUnreachable, open_store, tracking_uri

    uri = tracking_uri(root)
    if not create and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        _fail(f"no tracking store at {uri}; run a pipeline or `sublim record` first (or pass --root)")
    try:
        return Lineage(open_store(root, uri))
    except TrackingUnreachable as exc:
        _fail(str(exc))


def _resolve(lin, ref: str, root: Path, what: str = "MODEL") -> str:
    from sublim.lineage.query import RefError, resolve

    try:
        return resolve(ref, lin, root, what=what)
    except RefError as exc:
        _fail(str(exc))


def _node(lin, node_id: str, ref: str):
    from sublim.lineage.query import LineageError

    try:
        return lin.node(node_id)
    except LineageError:
        _fail(f"{ref}: unknown provenance: this content (identity {node_id[:12]}) was never recorded; record it "
              "with `sublim record model|dataset`", code=2)


def _threshold(params: Path | None, root: Path, override: float | None) -> float:
    """--threshold, else params.yaml's lineage.trait_threshold, else the default; errors name the key."""
    if override is not None:
        if override < 0:
            _fail(f"--threshold {override}: must be >= 0")
        return override
    path = params or Path(root) / config.PARAMS_FILE
    if params is None and not path.is_file():
        return config.Lineage().trait_threshold
    try:
        raw = config.read_raw(path)
        section = raw.get("lineage", {}) if isinstance(raw, dict) else {}
        return config.parse({"lineage": section}, str(path)).lineage.trait_threshold
    except config.ConfigError as exc:
        _fail(str(exc))


def _hops_table(title: str, hops) -> None:
    from rich.table import Table

    from sublim.lineage.query import RELATIONS

    table = Table(title=title)
    for col in ("hop", "relation", "node", "kind", "role", "gen", "traits / origin", "measured"):
        table.add_column(col)
    for h in hops:
        n = h.node
        measured = ", ".join(f"{k}={v:.3g}" for k, v in sorted(n.measured.items()))
        extra = ", ".join(sorted(n.declared)) or (n.edges.origin or "")
        table.add_row(str(h.hops), RELATIONS[h.relation], n.label, n.kind, n.tag("role") or "",
                      n.tag("generation") or "", extra, measured)
    out().print(table)


@lineage_app.command(cls=UsageExit3)
def ancestors(model: str, root: RootOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Everything MODEL descends from, hop by hop: weights (initialised from) and data (trained on, generated
    by, derived from). Exit 2 when MODEL was never recorded."""
    lin = _lineage(root)
    node = _node(lin, _resolve(lin, model, root), model)
    hops = lin.ancestors(node.id)
    if as_json:
        print(json.dumps({"model": node.as_dict(), "ancestors": [h.as_dict() for h in hops]}, indent=1))
    else:
        _hops_table(f"ancestors of {node.label}", hops)


@lineage_app.command(cls=UsageExit3)
def descendants(ref: Annotated[str, typer.Argument(metavar="MODEL|DATASET")], root: RootOpt = Path("."),
                as_json: JsonOpt = False) -> None:
    """Everything downstream of a model or a dataset."""
    lin = _lineage(root)
    node = _node(lin, _resolve(lin, ref, root, "MODEL|DATASET"), ref)
    hops = lin.descendants(node.id)
    if as_json:
        print(json.dumps({"start": node.as_dict(), "descendants": [h.as_dict() for h in hops]}, indent=1))
    else:
        _hops_table(f"descendants of {node.label}", hops)


@lineage_app.command(cls=UsageExit3)
def graph(
    ref: Annotated[str, typer.Argument(metavar="MODEL|EXPERIMENT")],
    root: RootOpt = Path("."),
    out_dir: Annotated[Path, typer.Option("--out", help="folder for lineage.mmd, lineage.dot, lineage.png")] = Path("reports/lineage"),
    datasets: Annotated[bool, typer.Option("--datasets", help="draw every dataset as a node")] = False,
    threshold: ThresholdOpt = None,
    params: LineageParams = None,
) -> None:
    """The lineage as Mermaid and DOT text and a PNG: an experiment's models, or one model's ancestry with
    its at-risk paths marked (also logged to MLflow for an experiment)."""
    from sublim.lineage import graph as graphs
    from sublim.lineage.audit import audit as run_audit

    lin = _lineage(root)
    exp = lin.client.get_experiment_by_name(ref) if ref.strip() else None
    if exp is not None:
        g = graphs.of_experiment(lin, exp.experiment_id, datasets=datasets)
        if not g.nodes:
            _fail(f"{ref}: nothing recorded in this experiment yet; no lineage to draw")
    else:
        node = _node(lin, _resolve(lin, ref, root, "MODEL|EXPERIMENT"), ref)
        if node.kind != "model":
            _fail(f"{ref}: is a {node.kind}; `lineage graph` draws a model's ancestry or an experiment's models "
                  f"(`sublim lineage descendants {ref}` lists the models trained on it)")
        report = run_audit(lin, node.id, threshold=_threshold(params, root, threshold))
        g = graphs.of_report(report, datasets=datasets)
    files = graphs.write(g, out_dir)
    if exp is not None:
        run = lin.client.create_run(exp.experiment_id, run_name="lineage-graph", tags={"sublim.kind": "lineage-graph"})
        for file in files:
            lin.client.log_artifact(run.info.run_id, str(file), "lineage")
        lin.client.set_terminated(run.info.run_id)
    print(g.mermaid())
    console.print(f"wrote {out_dir}/lineage.mmd, lineage.dot, lineage.png ({len(g.nodes)} nodes, {len(g.edges)} "
                  f"edges; drawn with {g.engine})", highlight=False)


def _print_report(report, show_all: bool) -> None:
    from rich.table import Table

    model = report.model
    measured = ", ".join(f"{k}={v:.3g}" for k, v in sorted(model.measured.items())) or "nothing"
    table = Table(title=f"audit of {model.label} (role {model.role}; measured {measured})")
    for col in ("teacher", "role", "traits", "hops", "shares init", "at risk"):
        table.add_column(col)
    for e in report.exposures:
        table.add_row(e.teacher.label, e.teacher.role, "; ".join(str(t) for t in e.traits) or "-", str(e.hops),
                      "yes" if e.shares_init else "no", "[red]YES[/red]" if e.at_risk else "no")
    o = out()
    o.print(table)
    if report.own_traits:
        o.print(f"own traits: {'; '.join(str(t) for t in report.own_traits)}", highlight=False)
    for e in report.exposures:
        paths = e.paths if show_all and e.paths else (e.path,)
        label = "at-risk path" if e.at_risk else "path"
        for p in paths:
            o.print(f"{label if not show_all else ('at risk' if p.at_risk else 'no risk')}: {p.text(report.nodes)}",
                    highlight=False, markup=False)
    if report.truncated:
        o.print("(paths listed up to --max-paths per teacher)", highlight=False)
    for u in report.unknowns:
        o.print(f"[yellow]unknown:[/yellow] {u.why}", highlight=False)
    for dataset, found in report.screens.items():
        o.print(f"training data screened: {dataset}: {found}", highlight=False, markup=False)
    verdicts = {"at risk": f"[red]at risk:[/red] {', '.join(report.at_risk)} (a teacher with this trait reaches the "
                           "model by a path on which every teacher-to-student step shares an initialisation)",
                "unknown provenance": "[yellow]unknown provenance[/yellow]: no trait found at risk, but the lineage "
                                      "is incomplete (see above)",
                "clean": "clean: no trait at risk"}
    o.print(verdicts[report.verdict], highlight=False)


@app.command(cls=FindingExits)
def audit(
    model: str,
    root: RootOpt = Path("."),
    trait: TraitsOpt = None,
    all_paths: Annotated[bool, typer.Option("--all", help="list every path from each teacher, not only the "
                                                          "shortest at-risk one")] = False,
    max_paths: Annotated[int, typer.Option("--max-paths", min=1, help="cap per teacher with --all")] = 100,
    threshold: ThresholdOpt = None,
    params: LineageParams = None,
    as_json: JsonOpt = False,
) -> None:
    """Could a teacher's trait have reached MODEL? Exit 0 clean, 1 at risk, 2 unknown, 3 usage error, 4 internal.

    Walks weights (initialised from) and data (trained on data generated by) through every path; a trait is
    at risk when a teacher with a declared or measured trait reaches MODEL by a path on which every
    teacher-to-student step shares its initialisation (followed up init edges to the root).

    Exit codes: 0 clean, 1 at risk, 2 unknown provenance (something on the way was never recorded, or a
    dataset's origin is unknown; 1 wins over 2), 3 usage error or unreachable store, 4 an unexpected error."""
    from sublim.lineage.audit import audit as run_audit
    from sublim.lineage.query import RefError

    limit = _threshold(params, root, threshold)
    lin = _lineage(root)
    node = _node(lin, _resolve(lin, model, root), model)
    try:
        report = run_audit(lin, node.id, traits=trait, threshold=limit, all_paths=all_paths, max_paths=max_paths)
    except RefError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        _print_report(report, all_paths)
    raise typer.Exit(report.exit_code)


@app.command(cls=UsageExit3)
def card(
    model: str,
    out_file: Annotated[Path | None, typer.Option("--out", help="README.md to write or update in place "
                                                                "(default: print the section)")] = None,
    root: RootOpt = Path("."),
    trait: TraitsOpt = None,
    threshold: ThresholdOpt = None,
    params: LineageParams = None,
) -> None:
    """Write a model card section for MODEL: base_model and its training data origins.

    YAML base_model, then the teachers whose data reached it, hops, shared-init status, measured traits and
    the audit verdict, ready to ship with a released model."""
    from sublim.lineage import card as cards
    from sublim.lineage.audit import audit as run_audit
    from sublim.lineage.query import RefError

    limit = _threshold(params, root, threshold)
    lin = _lineage(root)
    node = _node(lin, _resolve(lin, model, root), model)
    try:
        report = run_audit(lin, node.id, traits=trait, threshold=limit)
        if out_file is None:
            print(cards.section(report, lin), end="")
        else:
            cards.write(report, lin, out_file)
            console.print(f"wrote {out_file} (audit: {report.verdict})", highlight=False)
    except (RefError, OSError) as exc:
        _fail(str(exc))


def _measurements(items: list[str] | None) -> dict[str, float]:
    found = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            found[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            _fail(f"--measured {item!r}: expected KEY=VALUE with a number, e.g. p_owl=0.31")
    return found


def _recorded(fn, *args, as_json: bool, **kwargs) -> None:
    from sublim.lineage.nodes import NodeConflict
    from sublim.lineage.query import RefError
    from sublim.lineage.record import TrackingUnreachable

    try:
        done = fn(*args, **kwargs)
    except (RefError, NodeConflict, TrackingUnreachable, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(done.as_dict(), indent=1))
    else:
        how = "new node" if done.created else f"already recorded: merged into {done.model_id}"
        console.print(f"recorded {done.kind} {done.name} (identity {done.id[:12]} by {done.how}; {how})",
                      highlight=False)


@record_app.command("model", cls=UsageExit3)
def record_model(
    source: Annotated[str, typer.Argument(help="a local model directory, or a hub model pinned as "
                                               "org/name@commit (never fetched), or a recorded model")],
    init_from: Annotated[str | None, typer.Option("--init-from", help="the model whose weights it started "
                                                                     "from (none: a root)")] = None,
    trained_on: Annotated[list[str] | None, typer.Option("--trained-on", help="a dataset it was trained on "
                                                                             "(repeatable)")] = None,
    trait: Annotated[list[str] | None, typer.Option("--trait", help="a declared trait (repeatable)")] = None,
    measured: Annotated[list[str] | None, typer.Option("--measured", help="KEY=VALUE measurement, e.g. "
                                                                          "p_owl=0.31 (repeatable)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="display name")] = None,
    from_card: Annotated[bool, typer.Option("--from-card", help="also read base_model and datasets from "
                                                                "SOURCE/README.md")] = False,
    root: RootOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Record a model sublim did not train. Its identity is its weight tensors (a persona: its base plus the
    persona text; an adapter: its tensors plus its base; a hub model: id@commit), so recording it again,
    or a copy, adds to the same node."""
    from sublim.lineage.record import record_model as record

    _recorded(record, source, init_from=init_from, trained_on=trained_on or [], traits=trait or [],
              measured=_measurements(measured), name=name, from_card=from_card, root=root, as_json=as_json)


@record_app.command("dataset", cls=UsageExit3)
def record_dataset(
    path: Annotated[str, typer.Argument(help="a dataset file or directory (identified by its content)")],
    generated_by: Annotated[str | None, typer.Option("--generated-by", help="the model that generated it")] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help="the prompts file it was generated from")] = None,
    origin: Annotated[str | None, typer.Option("--origin", help="human | external | synthetic (not generated "
                                                                "by a model)")] = None,
    derived_from: Annotated[list[str] | None, typer.Option("--derived-from", help="a dataset it filters or "
                                                                                 "transforms (repeatable)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="display name")] = None,
    root: RootOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Record a dataset sublim did not make. A dataset needs --generated-by, --origin or --derived-from to
    count as known: models trained on it otherwise audit as unknown provenance (exit 2)."""
    from sublim.lineage.record import record_dataset as record

    _recorded(record, path, generated_by=generated_by, prompts=prompts, origin=origin,
              derived_from=derived_from or [], name=name, root=root, as_json=as_json)


def entrypoint() -> NoReturn:
    """The `sublim` command. It ends without CPython's teardown of every loaded module (~1 s once torch, MLflow
    and Prefect are loaded; ~2 s after a flow, every command and every DVC stage paid it). What that teardown
    would have done that matters still happens, in its order: other threads are joined, exit handlers run
    (Prefect's log and event workers flush to the temporary server, which then stops), logging and stdout and
    stderr are flushed. An error that -v re-raises leaves the normal way, with its traceback."""
    sys.stdout = ReaderGone(sys.stdout)
    try:
        app()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    if code in (INTERRUPTED, TERMINATED):
        _end_workers()
    threading._shutdown()  # as the interpreter's own exit: threading's exit hooks (Prefect's services drain), joins
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (`sublim ... | head`)
            stream.flush()
    os._exit(code or 0)


def _end_workers(grace_s: float = 3.0) -> None:
    """An interrupted flow's worker processes wait for work that will never come, and multiprocessing's exit
    joins them: `sublim flow --workers 2` hung after Ctrl-C. Their jobs got the SIGINT too and stopped; after a
    grace for their bookkeeping (runs ended KILLED) they are ended."""
    import multiprocessing
    import time

    from sublim.orchestrate import pool_workers

    deadline = time.monotonic() + grace_s
    for worker in pool_workers():
        worker.join(max(0.0, deadline - time.monotonic()))
    for worker in multiprocessing.active_children():  # the relay's manager too
        if worker.is_alive():
            worker.terminate()
            worker.join(5)


if __name__ == "__main__":
    entrypoint()
