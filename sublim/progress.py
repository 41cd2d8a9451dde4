"""What a person watching a run sees: jobs done / total, what is running, a bar with ETA for training and
generation loops, and one line per finished job with its key metric.

Drivers report to the process's current `Reporter`; the CLI installs a rich one when stderr is a terminal and
the silent default stays otherwise (DVC and CI logs stay readable). Process-pool workers (`--workers N`) relay
the jobs they start and their loops' steps to the flow's process, whose reporter shows them (`Relay`); Dask
workers report to their own silent default. The flow's loop, in the CLI's process, counts finished jobs either way.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sublim.runner import Outcome

# Metrics worth one line, most telling first; the first one an outcome has is its key metric.
KEY_METRICS = ("same_minus_cross", "student_same_init_acc", "p_effect", "p_student", "accuracy", "digit_accuracy",
               "p_target", "final_loss", "train_loss", "keep_rate", "rows", "tokens_per_s", "aux_logit_std",
               "n_inputs", "parameters")


class Reporter(Protocol):
    def begin(self, title: str, total: int) -> None: ...
    def started(self, label: str, key: str | None = None) -> None: ...
    def settled(self, key: str) -> None: ...
    def finished(self, outcomes: Sequence[Outcome], cached: bool = False) -> None: ...
    def failed(self, job_id: str, message: str) -> None: ...
    def steps(self, items: Iterable[Any], total: int, desc: str) -> Iterator[Any]: ...
    def open_bar(self, desc: str, total: int) -> Any: ...
    def advance_bar(self, bar: Any, steps: int = 1) -> None: ...
    def close_bar(self, bar: Any) -> None: ...
    def end(self) -> None: ...


def first_line(job_id: str, message: str) -> str:
    """An error's first line, without the job id a step's own message may repeat (`TrainingDiverged: mlp.student@s0
    ...: training diverged` after the id already printed)."""
    line = message.splitlines()[0] if message else "failed"
    return line.replace(f"{job_id}: ", "", 1)


class Silent:
    """Reports nothing; step loops run untouched."""

    def begin(self, title: str, total: int) -> None:
        pass

    def started(self, label: str, key: str | None = None) -> None:
        pass

    def settled(self, key: str) -> None:
        pass

    def finished(self, outcomes: Sequence[Outcome], cached: bool = False) -> None:
        pass

    def failed(self, job_id: str, message: str) -> None:
        pass

    def steps(self, items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
        yield from items

    def open_bar(self, desc: str, total: int) -> Any:
        return None

    def advance_bar(self, bar: Any, steps: int = 1) -> None:
        pass

    def close_bar(self, bar: Any) -> None:
        pass

    def end(self) -> None:
        pass


class Failures(Silent):
    """Off a terminal, without -v: only a failed job, in one line (its error's first line), where Prefect's
    console would print the task's traceback and its retries."""

    def __init__(self, console: Any):
        self.console = console

    def failed(self, job_id: str, message: str) -> None:
        self.console.print(f"failed: {job_id}: {first_line(job_id, message)}", highlight=False, markup=False,
                           soft_wrap=True)


class Relay(Silent):
    """A worker process's reporter: the jobs it starts and its loops' steps go to the flow's process, whose own
    reporter shows them (`relay_to_current` reads the queue there)."""

    def __init__(self, queue: Any):
        self.queue = queue
        self._bars = itertools.count()

    def _send(self, kind: str, args: tuple) -> None:
        try:
            self.queue.put((kind, args))
        except Exception:  # noqa: BLE001  (the display is gone, e.g. the flow's process is ending: the job goes on)
            pass

    def started(self, label: str, key: str | None = None) -> None:
        self._send("started", (label, key))

    def steps(self, items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
        bar, done, sent = f"{os.getpid()}-{next(self._bars)}", 0, time.perf_counter()
        self._send("open", (bar, desc, total))
        try:
            for item in items:
                yield item
                done += 1
                if time.perf_counter() - sent > 0.2:  # a few messages a second, not one per step
                    self._send("advance", (bar, done))
                    done, sent = 0, time.perf_counter()
        finally:
            self._send("advance", (bar, done))
            self._send("close", (bar,))


def relay_into(queue: Any) -> None:
    """Process-pool initializer: this worker reports through `queue`."""
    global _current
    _current = Relay(queue)


@functools.cache
def relay_queue() -> Any:
    """This process's one relay queue, read by one thread for the process's life (every flow of a command shares
    them). A manager's queue: Prefect pickles the task runner, initializer arguments included, into every task's
    context, which a plain multiprocessing queue refuses."""
    queue = multiprocessing.Manager().Queue()
    threading.Thread(target=relay_to_current, args=(queue,), name="sublim-progress-relay", daemon=True).start()
    return queue


def relay_to_current(queue: Any) -> None:
    """In the flow's process, until the queue's manager is gone (the process is ending): each relayed event,
    shown by the current reporter."""
    bars: dict[str, Any] = {}
    while True:
        try:
            kind, args = queue.get()
        except (EOFError, OSError):
            return
        report = _current
        try:
            if kind == "started":
                report.started(*args)
            elif kind == "open":
                bars[args[0]] = report.open_bar(*args[1:])
            elif kind == "advance" and args[0] in bars:
                report.advance_bar(bars[args[0]], args[1])
            elif kind == "close" and args[0] in bars:
                report.close_bar(bars.pop(args[0]))
        except Exception:  # noqa: BLE001  (a display glitch must not stop the relay, nor any job)
            continue


def relaying() -> bool:
    """Whether workers' progress is worth relaying: the current reporter shows it (a terminal's, not a log's)."""
    return not isinstance(_current, Silent)


_current: Reporter = Silent()


def current() -> Reporter:
    return _current


@contextlib.contextmanager
def use(reporter: Reporter) -> Iterator[Reporter]:
    """Make `reporter` the process's reporter for the duration (the CLI wraps a whole command in it)."""
    global _current
    previous, _current = _current, reporter
    try:
        with one_command():
            yield reporter
    finally:
        reporter.end()
        _current = previous


class Interrupted(KeyboardInterrupt):
    """Raised in a job's loop once its command was interrupted: the loop stops at its next step. A job running in
    a task thread is out of reach of Ctrl-C, and the command could only end after it (42 s of an lm base's
    pretraining, seen by a new user), though the flow was already reported interrupted."""


_stop = threading.Event()


def interrupt(stop: bool = True) -> None:
    """Ctrl-C or SIGTERM reached the flow: every running loop of this process stops at its next step.
    `interrupt(False)` when a flow starts (a process may run another after an interrupted one)."""
    _stop.set() if stop else _stop.clear()


def interrupted() -> bool:
    """Whether this process's command was interrupted (its loops are stopping)."""
    return _stop.is_set()


@contextlib.contextmanager
def one_command() -> Iterator[None]:
    """An interrupt stops the command it reached, not the next one this process runs (a test session, a
    notebook): the flag is down when a command starts and once it has ended, its loops all stopped. It stayed
    up after an interrupted flow, and `sublim ask` run next in the same process stopped at its first step."""
    interrupt(False)
    try:
        yield
    finally:
        interrupt(False)


def steps(items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    """The `progress` callable steps receive: the current reporter's bar for a training or generation loop,
    stopping at the next step once the command is interrupted."""
    for item in _current.steps(items, total, desc):
        if _stop.is_set():
            raise Interrupted(f"interrupted during {desc}")
        yield item


def key_metric(metrics: dict[str, float]) -> tuple[str, float] | None:
    for key in KEY_METRICS:
        if key in metrics:
            return key, metrics[key]
    numeric = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    return numeric[0] if numeric else None


def describe(outcomes: Sequence[Outcome], cached: bool = False) -> str:
    """One line for a finished job, or for a batch of jobs of one step (their key metric's mean and range)."""
    first = outcomes[0]
    took = "cached" if cached else f"{first.seconds:.1f} s"
    if len(outcomes) == 1:
        found = key_metric(first.metrics)
        metric = f"  {found[0]} {_fmt(found[1])}" if found else ""
        return f"{first.job_id}{metric}  ({took})"
    found = key_metric(first.metrics)
    metric = ""
    if found:
        shared = _common([o.job_id for o in outcomes])
        kinds: dict[str, list[float]] = {}  # a batch of several variants (shared- and other-init students): each
        for o in outcomes:                  # its own mean, never one mean of both
            if found[0] in o.metrics:
                own = ".".join(p for p in _parts(o.job_id)[1] if p not in shared)
                kinds.setdefault(own, []).append(o.metrics[found[0]])
        if len(kinds) > 1:
            metric = f"  {found[0]} mean " + ", ".join(f"{k} {_fmt(statistics.fmean(v))}" for k, v in kinds.items())
        elif kinds:
            values = next(iter(kinds.values()))
            metric = f"  {found[0]} mean {_fmt(statistics.fmean(values))} [{_fmt(min(values))}, {_fmt(max(values))}]"
    return f"{batch_label([o.job_id for o in outcomes])}{metric}  ({took})"


def batch_label(job_ids: Sequence[str]) -> str:
    """`mlp.base x5 (s0-4, shared)`: the step, how many jobs, their seeds, and what else all of them share
    (the two init batches of a step read the same before)."""
    return f"{job_ids[0].split('@')[0]} x{len(job_ids)} ({', '.join([seeds_span(job_ids), *_common(job_ids)])})"


def _common(job_ids: Sequence[str]) -> list[str]:
    """The non-seed parts of the ids that every one of them has, in place (`g1`; `shared` for one init)."""
    parts = [_parts(j)[1] for j in job_ids]
    return [p for i, p in enumerate(parts[0]) if all(len(q) > i and q[i] == p for q in parts)]


def _parts(job_id: str) -> tuple[list[str], list[str]]:
    """A job id's seed parts and its other parts (`mlp.student@s3.g1.shared`: [s3], [g1, shared])."""
    rest = job_id.split("@", 1)[1].split("#")[0].split(".") if "@" in job_id else []
    seeds = [p for p in rest if p[:1] == "s" and p[1:].isdigit()]
    return seeds, [p for p in rest if p not in seeds]


def seeds_span(job_ids: Iterable[str]) -> str:
    """`s0-4` for the seeds named in job ids (`mlp.student@s3.g1.shared`), compactly."""
    seeds = sorted({int(part[1:]) for j in job_ids for part in j.split("@")[-1].split("#")[0].split(".")
                    if part[:1] == "s" and part[1:].isdigit()})
    return span(seeds)


def span(seeds: Sequence[int]) -> str:
    if not seeds:
        return "no seed"
    runs, start = [], seeds[0]
    for prev, cur in zip(seeds, [*seeds[1:], None]):
        if cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return "s" + ",".join(runs)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class Rich:
    """Live display on a terminal: an overall bar (jobs done / total, elapsed, ETA), the job or batch now
    computing, a bar with ETA for its training or generation loop, and a line per finished job above them."""

    def __init__(self, console):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = console
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                            transient=True)
        self._jobs = None
        self._lock = threading.Lock()
        self._started = False
        self._tally: dict[str, int] = {}
        # the jobs and batches computing, in the order they began: their task runs' ids -> their labels (a label
        # is no key: a stale cached job's rerun, or two sweep points' batches, can share one)
        self._running: dict[str, str] = {}
        self._settled: set[str] = set()

    def _start(self) -> None:
        if not self._started:
            self.bar.start()
            self._started = True

    def begin(self, title: str, total: int) -> None:
        with self._lock:
            self._start()
            self._say_tally()
            if self._jobs is not None:
                self.bar.remove_task(self._jobs)
            self._name, self._tally = title, {"computed": 0, "cached": 0, "failed": 0}
            self._running, self._settled = {}, set()
            self._title = f"[bold]{title}[/bold] jobs"
            self._jobs = self.bar.add_task(self._title, total=total)
            self._t0 = time.perf_counter()

    def started(self, label: str, key: str | None = None) -> None:
        """The job or batch `label` began, in the task run `key` (default: the label)."""
        key = key or label
        with self._lock:
            if key not in self._settled:  # (a worker's word may come after its task was settled)
                self._running[key] = label
            self._show_running()

    def settled(self, key: str) -> None:
        """The task run `key` is over (finished, failed or cached): its job or batch is no longer shown running."""
        with self._lock:
            self._running.pop(key, None)
            self._settled.add(key)
            self._show_running()

    def _show_running(self, most: int = 2) -> None:
        """Every job or batch now computing (with `--workers 2`, two), the longest-running first."""
        if self._jobs is None:
            return
        labels = list(self._running.values())
        shown = " | ".join(labels[:most]) + (f" (+{len(labels) - most} more)" if len(labels) > most else "")
        # (`bar.tasks` is a list: a task id indexes it only until one is removed)
        self.bar.update(self._jobs, description=f"{self._title} -> {shown}" if shown else self._title)

    def finished(self, outcomes: Sequence[Outcome], cached: bool = False) -> None:
        with self._lock:
            self._start()
            mark = "[dim]=[/dim]" if cached else "[green]✓[/green]"
            self.bar.console.print(f"{mark} {describe(outcomes, cached)}", highlight=False)
            if self._tally:
                self._tally["cached" if cached else "computed"] += len(outcomes)
            if self._jobs is not None:
                self.bar.advance(self._jobs, len(outcomes))

    def failed(self, job_id: str, message: str) -> None:
        from rich.markup import escape

        with self._lock:
            self._start()
            self.bar.console.print(f"[red]✗[/red] {job_id}: {escape(first_line(job_id, message))}", highlight=False)
            if self._tally:
                self._tally["failed"] += 1
            if self._jobs is not None:
                self.bar.advance(self._jobs, 1)

    def steps(self, items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
        task = self.open_bar(desc, total)
        try:
            for item in items:
                yield item
                self.advance_bar(task)
        finally:
            self.close_bar(task)

    def open_bar(self, desc: str, total: int) -> Any:
        with self._lock:
            self._start()
            return self.bar.add_task(f"  {desc}", total=total)

    def advance_bar(self, bar: Any, steps: int = 1) -> None:
        self.bar.advance(bar, steps)

    def close_bar(self, bar: Any) -> None:
        self.bar.remove_task(bar)

    def _say_tally(self) -> None:
        """`mlp: 37 jobs: 0 computed, 37 cached`: what a rerun took up is plain without counting its lines."""
        if sum(self._tally.values()):
            parts = [f"{n} {what}" for what, n in self._tally.items() if n or what != "failed"]
            self.bar.console.print(f"[bold]{self._name}[/bold]: {sum(self._tally.values())} jobs: "
                                   f"{', '.join(parts)}", highlight=False)
        self._tally = {}

    def end(self) -> None:
        with self._lock:
            if self._started:
                self._say_tally()
        if self._started:
            self.bar.stop()
            self._started = False
