"""Fan-out under failure: a job that keeps failing fails its task and only what depends on it; the rest of
the pipeline finishes and the summary names what is missing. A transient error is absorbed by Prefect's retry."""

from __future__ import annotations

import contextlib

import dataclasses
import os
import re
import sys
from pathlib import Path

import pytest

from sublim import config
from sublim.job import STEPS, TrainingDiverged, get_step
from sublim.lineage.record import client, tracking_uri
from tests.conftest import REPO, TINY_MLP, make_project


def _failing(monkeypatch, step: str, seed: int, times: int | None, error: type[Exception] = RuntimeError):
    """Make `step` raise `error` for `seed` (`times` times, or always), also inside a batch holding other seeds
    (the whole batch raises, as a real error would); jobs of other seeds run the real step."""
    real = get_step(step)
    calls = {"n": 0}

    def batch(contexts):
        for ctx in contexts:
            if ctx.job.seed == seed and (times is None or calls["n"] < times):
                calls["n"] += 1
                if error is TrainingDiverged:  # as `job.trained` raises it: naming its job
                    raise TrainingDiverged(f"injected failure in {ctx.job.id}", ctx.job.id)
                raise error(f"injected failure in {ctx.job.id}")
        return real.run(contexts)

    monkeypatch.setitem(STEPS, step, dataclasses.replace(real, fn=lambda ctx: batch([ctx])[0], batch=batch))
    return calls


def _run(root):
    from flows.pipeline import run_flow, sublim_pipeline

    params = root / "params.yaml"
    return run_flow(sublim_pipeline, config.load(params), pipeline="mlp", params=str(params))


def test_a_failing_job_fails_only_itself_and_its_dependents(tmp_path, prefect_server, monkeypatch):
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0, 1]}}, git=False)
    from flows.pipeline import build, outcome_of

    _failing(monkeypatch, "mlp.transfer", seed=1, times=None)
    state = build(config.load(root / "params.yaml"))(pipeline="mlp", params=str(root / "params.yaml"),
                                                      return_state=True)
    assert state.is_failed() and state.message.startswith("5 jobs did not finish: mlp.evaluate@s1")  # the UI says so
    result = outcome_of(state)
    assert result["missing"] == ["mlp.evaluate@s1", "mlp.student@s1.g1.other", "mlp.student@s1.g1.shared",
                                 "mlp.summary", "mlp.transfer@s1.g1"]
    assert "mlp.student@s0.g1.shared" in result["outcomes"] and "mlp.evaluate@s0" in result["outcomes"]
    assert "Not finished" in result["summary"] and "mlp.transfer@s1.g1" in result["summary"]
    assert not (root / "data/mlp/s1/g1/transfer").exists()  # no partial artifact
    mlflow = client(tracking_uri(root))
    exp = mlflow.get_experiment_by_name("sublim-mlp")
    failed = mlflow.search_runs([exp.experiment_id], filter_string="attributes.status = 'FAILED'")
    errors = {r.data.tags.get("sublim.job"): r.data.tags.get("sublim.error", "") for r in failed}
    assert "injected failure in mlp.transfer@s1.g1" in errors["mlp.transfer@s1.g1"]
    # the batch of both seeds failed as a whole; each job then ran alone, so seed 0's transfer finished
    ok = mlflow.search_runs([exp.experiment_id], filter_string="tags.`sublim.job` = 'mlp.transfer@s0.g1'")
    assert sorted(r.info.status for r in ok) == ["FAILED", "FINISHED"]
    # in the Prefect UI that batch's task is Failed, naming its failed job; the other batches are Completed
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as api:
        tasks = api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    states = {t.name: (t.state.type.value, t.state.message) for t in tasks}
    assert states["mlp.transfer x2 (s0-1, g1)"] == ("FAILED", "1 of 2 jobs failed: mlp.transfer@s1.g1")
    assert states["mlp.teacher x2 (s0-1, g0)"][0] == "COMPLETED"


def test_off_a_terminal_a_failed_job_is_one_line(tmp_path, prefect_server, monkeypatch):
    """`sublim flow` in a log (not a terminal), without -v: each failed job is one line with its error, and the
    summary says what did not finish (Prefect's task tracebacks are for -v)."""
    from typer.testing import CliRunner

    from sublim.cli import app

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0, 1]}}, git=False)
    _failing(monkeypatch, "mlp.transfer", seed=1, times=None)
    result = CliRunner().invoke(app, ["flow", "mlp", "-p", str(root / "params.yaml")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    assert lines == ["failed: mlp.transfer@s1.g1: RuntimeError: injected failure in mlp.transfer@s1.g1"], lines
    assert "Traceback" not in result.output
    not_finished = [line for line in result.output.splitlines() if line.startswith("Not finished: ")]
    assert not_finished == ["Not finished: mlp.evaluate@s1, mlp.student@s1.g1.other, mlp.student@s1.g1.shared, "
                            "mlp.summary, mlp.transfer@s1.g1"]  # one line, however long the list
    assert all(line == line.rstrip() for line in result.output.splitlines())  # nothing padded to 160 columns


def test_on_a_narrow_terminal_a_tables_cells_wrap_not_cut(monkeypatch):
    """A sweep's table on an 80-column terminal showed both rows as `mlp.st…` (and headers `same-i…`)."""
    from rich.console import Console

    from sublim import cli

    screen = Console(force_terminal=True, width=60, record=True)
    monkeypatch.setattr(cli, "out", lambda: screen)
    cli.show_markdown("| point | same-init effect | different-init effect |\n|---|---|---|\n"
                      "| mlp.student.loss=kl | +0.41 | +0.01 |\n| mlp.student.loss=mse | +0.38 | +0.02 |\n")
    text = screen.export_text()
    assert "…" not in text and "+0.38" in text
    assert "mlp.student.loss=k" in text and "mlp.student.loss=m" in text  # folded onto a second line, not cut


def test_off_a_terminal_results_are_lines_as_written(capsys):
    """In a log, a summary's table and verdict were rendered into 160 columns, padded with spaces (a verdict took
    12 lines), and messages wrapped at 80 (`sublim run`'s md5 on a line of its own): markdown comes as written,
    and a message stays one line."""
    from sublim import cli

    verdict = "Digit skill transferred: " + "a long verdict, " * 20
    cli.show_markdown(f"| model | accuracy |\n|---|---|\n| teacher | 0.866 |\n\n{verdict}\n")
    cli.console.print("mlp.teacher@s0.g0: models/mlp/s0/g0-shared md5=" + "0" * 32 + " " + "x" * 60, highlight=False)
    captured = capsys.readouterr()
    assert captured.out == f"| model | accuracy |\n|---|---|\n| teacher | 0.866 |\n\n{verdict}\n"
    assert len(captured.err.splitlines()) == 1


def test_a_batchs_line_says_what_its_jobs_share_and_never_averages_two_variants():
    """The shared- and the other-init bases printed as two identical `mlp.base x2 (s0-1)` lines (and Prefect task
    runs), and a students' batch gave one mean of both inits' losses."""
    from sublim import progress
    from sublim.runner import Outcome

    def done(job_id, loss):
        return Outcome(job_id, "out", "d", "model", {"final_loss": loss}, None, None, None, (), 1.0, 4)

    assert progress.batch_label(["mlp.base@s0.shared", "mlp.base@s1.shared"]) == "mlp.base x2 (s0-1, shared)"
    students = [done(f"mlp.student@s{s}.g1.{init}", loss) for s in (0, 1) for init, loss in
                (("shared", 0.001), ("other", 0.03))]
    assert progress.describe(students) == ("mlp.student x4 (s0-1, g1)  final_loss mean shared 0.001, other 0.03  "
                                           "(1.0 s)")
    assert progress.describe(students[::2]) == ("mlp.student x2 (s0-1, g1, shared)  final_loss mean 0.001 "
                                                "[0.001, 0.001]  (1.0 s)")
    assert progress.key_metric({"base_other_init_acc": 0.1, "same_minus_cross": 0.4}) == ("same_minus_cross", 0.4)


def test_a_failed_jobs_line_names_the_job_once():
    """A step's own message may start with the job id (a log line must say which model diverged); the failure
    line, which starts with it, does not repeat it."""
    from sublim.job import trained
    from sublim.progress import first_line

    with pytest.raises(TrainingDiverged) as err:
        trained(float("nan"), "mlp.student@s0.g1.shared", "mlp.student.lr", 1e30)
    assert str(err.value).startswith("mlp.student@s0.g1.shared: ")
    import pickle  # a process worker's error crosses to the flow pickled: it still names its job

    assert pickle.loads(pickle.dumps(err.value)).job_id == err.value.job_id == "mlp.student@s0.g1.shared"
    assert first_line("mlp.student@s0.g1.shared", f"TrainingDiverged: {err.value}\nmore") == (
        "TrainingDiverged: training diverged (final loss nan) at mlp.student.lr = 1e+30; lower mlp.student.lr in "
        "params.yaml")


def test_a_transient_error_is_retried(tmp_path, prefect_server, monkeypatch):
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}, "runtime": {"retries": 1}}, git=False)
    calls = _failing(monkeypatch, "mlp.transfer", seed=0, times=1)
    result = _run(root)
    assert calls["n"] == 1 and result["missing"] == []


def test_without_retries_a_failed_batch_of_one_fails_its_job(tmp_path, prefect_server, monkeypatch):
    """`runtime.retries: 0`: a one-job batch that raised has had its only attempt, and its error is the job's
    (it was an UnboundLocalError of the flow's own, which hid it)."""
    from sublim import progress

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}, "runtime": {"retries": 0}}, git=False)
    calls = _failing(monkeypatch, "mlp.transfer", seed=0, times=None)
    seen = _Recorder()
    with progress.use(seen):
        result = _run(root)
    assert calls["n"] == 1 and "mlp.transfer@s0.g1" in result["missing"]
    failed = [e for e in seen.events if e[0] == "failed"]
    assert failed and all("injected failure in mlp.transfer@s0.g1" in message for _, _, message in failed), failed


def test_an_error_the_job_would_raise_again_is_not_retried(tmp_path, prefect_server, monkeypatch):
    """A diverged training diverges again: the job its error names fails at once and its siblings run again as a
    batch (each job alone, and the diverged one once more, cost 1 + n attempts); a one-job task (Prefect's own
    retries) fails at its first attempt."""
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0, 1, 2]}, "runtime": {"retries": 2}},
                        git=False)
    calls = _failing(monkeypatch, "mlp.transfer", seed=1, times=None, error=TrainingDiverged)
    batches = []
    real = get_step("mlp.transfer").batch
    counted = lambda contexts: batches.append([c.job.seed for c in contexts]) or real(contexts)  # noqa: E731
    monkeypatch.setitem(STEPS, "mlp.transfer", dataclasses.replace(get_step("mlp.transfer"), batch=counted))
    result = _run(root)
    assert calls["n"] == 1 and batches == [[0, 1, 2], [0, 2]]  # the batch, then its sound jobs as one
    assert "mlp.transfer@s1.g1" in result["missing"]
    assert not {"mlp.transfer@s0.g1", "mlp.transfer@s2.g1"} & set(result["missing"])
    # in MLflow, only the diverged job failed: its siblings' first runs were stopped, their second ones finished
    store = client(tracking_uri(root))
    runs = store.search_runs([store.get_experiment_by_name("sublim-mlp").experiment_id],
                             "tags.`sublim.step` = 'mlp.transfer'", order_by=["attributes.start_time ASC"])
    statuses = {}
    for run in runs:
        statuses.setdefault(run.data.tags["sublim.job"], []).append(run.info.status)
    assert statuses == {"mlp.transfer@s0.g1": ["KILLED", "FINISHED"], "mlp.transfer@s1.g1": ["FAILED"],
                        "mlp.transfer@s2.g1": ["KILLED", "FINISHED"]}, statuses
    stopped = next(r for r in runs if r.info.status == "KILLED")
    assert stopped.data.tags["sublim.error"].startswith("stopped: mlp.transfer@s1.g1, in the same batch, failed")

    # two that diverge: after the second, each job alone (a batch per diverged job would grow as n squared)
    root = make_project(tmp_path / "r", {"mlp": {**TINY_MLP, "seeds": [0, 1, 2]}, "runtime": {"retries": 2}},
                        git=False)
    batches.clear()

    def two_diverge(contexts):
        batches.append([c.job.seed for c in contexts])
        bad = next((c.job.id for c in contexts if c.job.seed in (1, 2)), None)
        if bad:
            raise TrainingDiverged(f"injected failure in {bad}", bad)
        return real(contexts)

    monkeypatch.setitem(STEPS, "mlp.transfer", dataclasses.replace(get_step("mlp.transfer"), batch=two_diverge))
    result = _run(root)
    assert batches == [[0, 1, 2], [0, 2], [0], [2]]
    assert {"mlp.transfer@s1.g1", "mlp.transfer@s2.g1"} <= set(result["missing"])
    assert "mlp.transfer@s0.g1" not in result["missing"]

    root = make_project(tmp_path / "q", {"mlp": {**TINY_MLP, "seeds": [0]}, "runtime": {"retries": 2}}, git=False)
    data = {"n": 0}

    def diverging(ctx):
        data["n"] += 1
        raise TrainingDiverged("injected")

    monkeypatch.setitem(STEPS, "mlp.data", dataclasses.replace(get_step("mlp.data"), fn=diverging))
    assert get_step("mlp.data").batch is None  # Prefect's task retries apply, not the batch's
    assert "mlp.data" in _run(root)["missing"] and data["n"] == 1  # and the flow ended (no picture to draw)
    from typer.testing import CliRunner

    from sublim.cli import app

    drawn = CliRunner().invoke(app, ["lineage", "graph", "sublim-mlp", "--root", str(root), "--out", str(tmp_path)])
    assert drawn.exit_code == 3 and "nothing recorded in this experiment yet" in drawn.output, drawn.output


@pytest.mark.parametrize("runner", ["thread", "process"])
def test_runner_choice_is_validated(runner):
    cfg = config.parse({"runtime": {"task_runner": runner, "max_workers": 1}})
    assert cfg.runtime.task_runner == runner
    with pytest.raises(config.ConfigError, match="max_workers"):
        config.parse({"runtime": {"task_runner": "thread", "max_workers": 2}})


def test_workers_override_the_runtime_without_changing_any_result(tmp_path, prefect_server):
    """`sublim flow --workers 2` (make demo's default on a 2-core machine) runs jobs in two worker processes;
    every artifact has the digest the one-at-a-time run gives it."""
    from flows.pipeline import build

    runtime = config.parse({}).runtime
    assert (runtime.with_workers(2).task_runner, runtime.with_workers(2).max_workers) == ("process", 2)
    assert (runtime.with_workers(1).task_runner, runtime.with_workers(1).max_workers) == ("thread", 1)
    assert runtime.with_workers(None) == runtime
    with pytest.raises(config.ConfigError, match="--workers: 0"):
        runtime.with_workers(0)
    digests = []
    for workers in (None, 2):
        root = make_project(tmp_path / f"w{workers}", {"mlp": {**TINY_MLP, "seeds": [0, 1]}}, git=False)
        cfg = config.load(root / "params.yaml").with_workers(workers)
        result = build(cfg)(pipeline="mlp", params=str(root / "params.yaml"), workers=workers)
        assert result["missing"] == []
        digests.append({k: o.digest for k, o in result["outcomes"].items()})
    assert digests[0] == digests[1]


def test_worker_processes_report_to_the_one_ephemeral_server(tmp_path):
    """With no PREFECT_API_URL, `sublim flow --workers 2` starts one temporary Prefect server and its worker
    processes report to it (each started its own: three servers on two cores, the parallel demo slower than
    one worker). The CLI starts it before its imports and MLflow checks, so Prefect starts none."""
    import os
    import subprocess

    from tests.conftest import BIN, cli_env

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0, 1]},  # (--workers 2 would run mlp in one)
                                         "runtime": {"task_runner": "process", "max_workers": 2}}, git=False)
    env = {k: v for k, v in cli_env().items() if not k.startswith("PREFECT_")}  # other tests' CLI runs set some
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="INFO", PYTHONPATH=str(root) + os.pathsep + env.get("PYTHONPATH", ""))
    ran = subprocess.run([str(BIN / "sublim"), "-v", "flow", "mlp"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    log = ran.stdout + ran.stderr
    assert ran.returncode == 0, log[-3000:]
    assert log.count("Starting temporary Prefect server") == 1, log[-3000:]  # the CLI's, started early
    assert log.count("Starting temporary server") == 0, log[-3000:]  # none of Prefect's own, in any process
    assert "Task run 'mlp.student" in log  # tasks ran (in the workers) and reported to that server
    assert "View at" not in log  # the temporary server has no UI and stops at exit: no dead links
    # the CLI skips the interpreter's teardown at exit, but not the flush of Prefect's logs: the flow's last line
    # reached the server before it stopped
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "prefect-home" / "prefect.db")) as db:
        flow_lines = [m for (m,) in db.execute("SELECT message FROM log WHERE task_run_id IS NULL")]
    assert any("Finished in state Completed" in m for m in flow_lines), flow_lines[-5:]
    assert "Error logging to API" not in log


def test_prefect_yaml_deployments_run_the_pipeline_built_from_params(tmp_path, prefect_server):
    """A work-pool run (prefect.yaml) gets the task runner params.yaml asks for: its entrypoint builds the
    pipeline from params (the bare flow it named ran every ready job at once in threads, a new-user audit)."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from flows.pipeline import build
    from tests.conftest import REPO

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    entrypoints = {d["entrypoint"] for d in spec["deployments"]}
    assert entrypoints == {"flows/deploy.py:scheduled_pipeline"}
    deployed = load_flow_from_entrypoint(str(REPO / "flows/deploy.py") + ":scheduled_pipeline")
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}}, git=False)
    result = deployed(pipeline="mlp", params=str(root / "params.yaml"))
    assert result["missing"] == []
    runner = build(config.load(root / "params.yaml")).task_runner
    assert type(runner).__name__ == "ThreadPoolTaskRunner" and runner._max_workers == 1  # params.yaml's, not ∞


def test_the_flow_reports_its_summary_jobs_text_not_the_first_one_it_finds():
    """Other jobs may carry a text (each detection probe has its panel): the flow's result is the summary's (a
    new-user audit saw `sublim flow detect` print one probe's panel, never the detection table)."""
    from types import SimpleNamespace

    from flows.pipeline import _summary_of
    from sublim.plan import plan

    jobs = plan(config.parse({}), "mlp")
    first, summary = jobs.jobs[0], next(j for j in jobs.jobs if j.step == "summary")
    finished = {first.id: SimpleNamespace(summary_markdown="one probe's panel"),
                summary.id: SimpleNamespace(summary_markdown="the detection table")}
    assert _summary_of(jobs, finished) == "the detection table"
    del finished[summary.id]  # the summary did not finish: the flow still shows what it has
    assert _summary_of(jobs, finished) == "one probe's panel"


def test_a_confirmation_says_it_is_one():
    """`sublim flow lm --confirm` printed the tuning run's table with nothing saying it was the confirmation (a
    new-user audit)."""
    from flows.pipeline import _headed

    cfg = config.parse({"confirm": {"seeds": [209, 200, 201, 202], "alpha": 0.05}})
    assert _headed("lm", cfg, "| table |") == "| table |"
    headed = _headed("lm-confirm", cfg, "| table |")
    assert headed.startswith("### Confirmation: the lm experiment on confirm.seeds 200-202,209 (none of them a "
                             "tuning seed in these params), verdicts at α = 0.05")
    assert headed.endswith("| table |")
    assert _headed("matrix-confirm", cfg, None) is None


class _Recorder:
    """A reporter that remembers what it was shown (stands in for the terminal's)."""

    def __init__(self):
        self.events = []

    def begin(self, title, total):
        pass

    def started(self, label, key=None):
        self.events.append(("started", label, key))

    def settled(self, key):
        self.events.append(("settled", key))

    def finished(self, outcomes, cached=False):
        pass

    def failed(self, job_id, message):
        self.events.append(("failed", job_id, message))

    def steps(self, items, total, desc):
        yield from items

    def open_bar(self, desc, total):
        self.events.append(("open", desc, total))
        return desc

    def advance_bar(self, bar, steps=1):
        self.events.append(("advance", bar, steps))

    def close_bar(self, bar):
        self.events.append(("close", bar))

    def end(self):
        pass


def test_worker_processes_show_their_jobs_and_loops_on_the_flows_display(tmp_path, prefect_server):
    """With --workers, the terminal shows the job each worker starts and its training bars, as with one worker
    (a new-user audit saw only the overall bar: workers reported to a silent reporter of their own)."""
    from flows.pipeline import build
    from sublim import progress

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0, 1]}}, git=False)
    cfg = config.load(root / "params.yaml").with_workers(2)
    seen = _Recorder()
    with progress.use(seen):
        result = build(cfg)(pipeline="mlp", params=str(root / "params.yaml"), workers=2)
    assert result["missing"] == []
    started = {e[1].split(" ")[0].split("@")[0] for e in seen.events if e[0] == "started"}
    assert {"mlp.teacher", "mlp.student"} <= started, seen.events[:20]
    # each job or batch shown as running is settled, by its task run's id (the display then stops showing it)
    assert {e[2] for e in seen.events if e[0] == "started"} <= {e[1] for e in seen.events if e[0] == "settled"}
    assert all(e[2] for e in seen.events if e[0] == "started")
    opened = [e for e in seen.events if e[0] == "open"]
    assert any(desc.startswith("student") for _, desc, _ in opened), opened
    desc, total = next((d, t) for _, d, t in opened if d.startswith("student"))
    assert sum(e[2] for e in seen.events if e[:2] == ("advance", desc)) >= total and ("close", desc) in seen.events


def test_off_a_terminal_workers_relay_nothing():
    from sublim import progress
    from sublim.orchestrate import task_runner

    runtime = config.parse({}).runtime.with_workers(2)
    assert task_runner(runtime)._initargs == (None,)  # the silent default: nothing to show, nothing sent
    with progress.use(_Recorder()):
        assert task_runner(runtime)._initargs == (progress.relay_queue(),)


def test_a_worker_process_leaves_without_teardown_but_runs_its_exit_handlers(tmp_path):
    """Each worker's teardown of torch, MLflow and Prefect (1.5-2.5 s) held the flow's end; the exit handlers
    that matter (Prefect's log and event workers flush, registered while the worker runs) still run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from sublim.orchestrate import worker_starts

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=worker_starts,
                             initargs=(None,)) as pool:
        pid = pool.submit(_registers_exit_handlers, str(tmp_path)).result()
        (process,) = pool._processes.values()
    assert process.exitcode == 0 and pid == process.pid
    assert (tmp_path / "flushed").read_text() == "at exit"  # an exit handler registered by the work ran
    assert not (tmp_path / "torn down").exists()  # the module teardown did not


def _registers_exit_handlers(where: str) -> int:
    import atexit
    import builtins

    class Teardown:  # reached only when the interpreter tears its modules down
        def __del__(self):
            Path(where, "torn down").write_text("yes")

    builtins._sublim_test_teardown = Teardown()
    atexit.register(lambda: Path(where, "flushed").write_text("at exit"))
    return os.getpid()


def test_the_current_job_is_shown_in_every_pipeline_of_one_command():
    """`sublim flow all` on a terminal: after the first pipeline's bars were removed, naming the current job
    of the second raised IndexError (rich's task list is not indexed by task id), in the job itself with one
    worker and in the relay with --workers."""
    import io

    from rich.console import Console

    from sublim.progress import Rich

    report = Rich(Console(file=io.StringIO(), force_terminal=True))
    report.begin("mlp", 3)
    list(report.steps(range(3), 3, "student x2"))
    report.begin("lm", 5)
    report.started("lm.base x2 (s0-1)")
    (task,) = report.bar.tasks
    assert task.description == "[bold]lm[/bold] jobs -> lm.base x2 (s0-1)"
    # with --workers 2, both jobs computing at once (the display showed the last one started only)
    report.started("lm.teacher@s0.trait")
    assert task.description == "[bold]lm[/bold] jobs -> lm.base x2 (s0-1) | lm.teacher@s0.trait"
    report.started("lm.teacher@s1.trait")
    assert task.description.endswith("-> lm.base x2 (s0-1) | lm.teacher@s0.trait (+1 more)")
    report.settled("lm.base x2 (s0-1)")
    report.settled("lm.teacher@s0.trait")
    assert task.description == "[bold]lm[/bold] jobs -> lm.teacher@s1.trait"
    report.settled("lm.teacher@s1.trait")
    report.started("lm.teacher@s1.trait")  # a worker's word that came after its task was settled
    assert task.description == "[bold]lm[/bold] jobs"
    # keyed by task run, not label: a stale cached job's rerun, or two sweep points' batches of one label, show
    report.started("lm.student@s0.trait", "run-1")
    report.started("lm.student@s0.trait", "run-2")
    report.settled("run-1")
    assert task.description == "[bold]lm[/bold] jobs -> lm.student@s0.trait"
    report.settled("run-2")
    assert task.description == "[bold]lm[/bold] jobs"
    report.end()


def test_each_pipeline_ends_with_its_jobs_computed_and_cached():
    """A rerun listed 67 `= ... (cached)` lines and no total: each pipeline now ends with one."""
    import io

    from rich.console import Console

    from sublim.progress import Rich
    from sublim.runner import Outcome

    screen = io.StringIO()
    report = Rich(Console(file=screen, force_terminal=True, width=120))
    done = lambda job_id: Outcome(job_id, "out", "d", "model", {}, None, None, None, (), 1.0, 1)  # noqa: E731
    report.begin("mlp", 3)
    report.finished([done("mlp.data")], cached=True)
    report.finished([done("mlp.base@s0.shared"), done("mlp.base@s1.shared")])
    report.begin("lm", 2)
    report.finished([done("lm.questions")], cached=True)
    report.failed("lm.base@s0.shared", "RuntimeError: boom")
    report.end()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # without the terminal's escapes
    assert "mlp: 3 jobs: 2 computed, 1 cached" in text
    assert "lm: 2 jobs: 0 computed, 1 cached, 1 failed" in text


def test_a_worker_whose_display_is_gone_keeps_computing():
    from sublim.progress import Relay

    class Gone:
        def put(self, item):
            raise BrokenPipeError("the manager has shut down")

    relay = Relay(Gone())
    relay.started("mlp.student x1 (s0)")
    assert list(relay.steps(range(5), 5, "student x1")) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("entry", ["sublim.cli", "flows.pipeline"])
def test_offline_by_design_no_usage_telemetry(entry):
    """MLflow 3 and Prefect's client send usage records from any process that is not CI or a test (Prefect
    with a first-run notice on the terminal); sublim's commands, DVC stages and flows do not (the environment
    can turn them back on)."""
    import subprocess

    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}  # no CI or pytest marks
    ask = ("from mlflow.telemetry.utils import is_telemetry_disabled as off; "
           "from prefect._internal.analytics.enabled import is_telemetry_enabled as on; print(off(), on())")
    run = lambda code, **extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra}, check=True,  # noqa: E731
                                               capture_output=True, text=True, cwd=REPO).stdout.split()[-2:]
    assert run(f"import mlflow; {ask}") == ["False", "True"]  # what plain MLflow and Prefect would do here
    assert run(f"import {entry}; {ask}") == ["True", "False"]
    assert run(f"import {entry}; {ask}", MLFLOW_DISABLE_TELEMETRY="false", DO_NOT_TRACK="0") == ["False", "True"]


def test_no_early_server_when_an_api_is_configured(prefect_server):
    """PREFECT_API_URL (here, the test harness's server) is used as it is: the CLI starts no server of its own."""
    from sublim.prefect_server import EarlyServer, reporting_to

    assert EarlyServer.start() is None
    with reporting_to(None):
        from prefect.settings import get_current_settings

        assert get_current_settings().api.url  # the configured one, untouched


def test_flows_on_a_temporary_server_send_no_heartbeats(prefect_server):
    """A server that stops with the command gets no flow-run heartbeats (joining their thread held each flow's end
    up to 1 s); a configured server (here the harness's) keeps Prefect's heartbeats."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from sublim.prefect_server import temporary_unless_configured

    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None
    with temporary_unless_configured():
        assert get_current_settings().flows.heartbeat_frequency == default
    with temporary_settings(updates={PREFECT_API_URL: None}), temporary_unless_configured():
        assert get_current_settings().flows.heartbeat_frequency is None
        assert get_current_settings().ui_url == ""


def test_an_early_server_that_exits_is_started_again_on_another_port(tmp_path):
    """The CLI picks a free port and releases it for the server to bind: if another process took it meanwhile the
    server exits, and is started again on a new port (twice, then the exit is an error)."""
    import subprocess

    from sublim.prefect_server import EarlyServer, _free_port

    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "health").write_text("ok")  # a stand-in server answering /api/health

    def stand_in(answers_after: int):
        spawned: list[int] = []

        class Server(EarlyServer):
            def _spawn(self) -> None:
                self.port = _free_port()
                self.url = f"http://127.0.0.1:{self.port}/api"
                argv = ([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--directory",
                         str(tmp_path)] if len(spawned) >= answers_after else [sys.executable, "-c", "exit(3)"])
                spawned.append(self.port)
                self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        return Server(), spawned

    server, spawned = stand_in(answers_after=1)
    try:
        server.wait()
        assert len(spawned) == 2 and server.port == spawned[-1]
    finally:
        server.stop()
    server, spawned = stand_in(answers_after=99)
    with pytest.raises(RuntimeError, match="exited with code 3"):
        server.wait()
    assert len(spawned) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_the_early_server_dies_with_the_cli_and_ignores_the_terminals_ctrl_c(tmp_path):
    """A CLI killed without running its exit handlers (SIGTERM, SIGKILL) takes its server with it (one was left
    running, orphaned: a new-user audit); the server is in a session of its own, so a Ctrl-C to the terminal's
    process group reaches the CLI only, which stops the server after Prefect's last flush."""
    import os
    import signal
    import subprocess
    import time

    script = ("import os, signal, sys\nfrom sublim.prefect_server import EarlyServer\ns = EarlyServer()\n"
              "print(s.process.pid, os.getpgid(s.process.pid), os.getpgid(0), flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    pid, server_group, cli_group = map(int, ran.stdout.split())
    assert ran.returncode == -signal.SIGKILL and server_group != cli_group
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "the server outlived the CLI"


def test_flow_runs_are_named_by_pipeline_seeds_and_params(tmp_path):
    """A flow run's name says what it runs (Prefect's random words did not): a sweep named by default is not
    called "sweep sweep"."""
    from flows.pipeline import run_name

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0, 1, 2]}}, git=False)
    params = str(root / "params.yaml")
    digest = config.load(params).digest()[:8]
    assert run_name("mlp", params) == f"mlp s0-2 params-{digest}"
    assert run_name("lm", params, "sweep").startswith("sweep lm s")
    assert run_name("lm", params, "animals").startswith("sweep animals lm s")
    (root / "bad.yaml").write_text("mlp: {seeds: nope}\n")
    assert run_name("mlp", str(root / "bad.yaml")) == "mlp (invalid params)"


def test_a_job_whose_recording_fails_leaves_the_output_it_would_have_replaced(tmp_path, monkeypatch):
    """A job fails after its output is written (here its lineage recording raises): the output that was there
    before is put back, not replaced by the failed job's (a new-user audit saw a FAILED job's model stand in
    place of the good one)."""
    import os

    from sublim.lineage.record import Tracker
    from sublim.plan import plan
    from sublim.runner import run_job

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}}, git=False)
    jobs = {j.id: j for j in plan(config.load(root / "params.yaml"), "mlp").jobs}
    track = Tracker(root, "sublim-mlp")
    for name in ("mlp.data", "mlp.base@s0.shared"):
        run_job(jobs[name], root=root, tracker=track)
    out = root / jobs["mlp.base@s0.shared"].output
    before = os.stat(out).st_ino

    def refuse(self, *args, **kwargs):
        raise RuntimeError("recording refused")

    monkeypatch.setattr(Tracker, "finish_job", refuse)
    with pytest.raises(RuntimeError, match="recording refused"):
        run_job(jobs["mlp.base@s0.shared"], root=root, tracker=track)
    assert os.stat(out).st_ino == before  # the very directory that was there, not the failed job's copy
    assert sorted(p.name for p in out.parent.iterdir()) == ["base-shared"]  # no .old-* or .tmp-* left
    runs = track.client.search_runs([track.experiment_id], "tags.`sublim.job` = 'mlp.base@s0.shared'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    with pytest.raises(RuntimeError, match="recording refused"):  # a job that had no output leaves none
        run_job(jobs["mlp.base@s0.other"], root=root, tracker=track)
    assert not (root / jobs["mlp.base@s0.other"].output).exists()


def test_a_diverged_training_fails_its_job_naming_the_setting(tmp_path):
    """lr 1e30 turns a teacher's weights to NaN: the job fails saying so and publishes nothing (the audit saw
    an all-NaN model recorded and registered)."""
    from sublim.job import TrainingDiverged
    from sublim.plan import plan
    from sublim.runner import run_job

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0], "teacher": {"lr": 1e30}}}, git=False)
    jobs = {j.id: j for j in plan(config.load(root / "params.yaml"), "mlp").jobs}
    for name in ("mlp.data", "mlp.base@s0.shared"):
        run_job(jobs[name], root=root, tracker=None)
    with pytest.raises(TrainingDiverged, match=r"mlp.teacher@s0.g0: training diverged .* lower mlp.teacher.lr"):
        run_job(jobs["mlp.teacher@s0.g0"], root=root, tracker=None)
    assert not (root / jobs["mlp.teacher@s0.g0"].output).exists()


def test_a_second_sigterm_while_a_flow_stops_kills_at_once(monkeypatch):
    """Prefect's SIGTERM handler stays installed while the flow tears down: a second SIGTERM raised into it (as
    the workers were stopped and the runs closed) instead of killing the command, as the CLI's handler does."""
    import signal

    from prefect.exceptions import TerminationSignal
    from prefect.utilities.engine import _prefect_sigterm_handler

    from flows import pipeline
    from sublim import progress

    closed = []

    class Track:
        def close_pipeline_run(self, run_id, status):
            closed.append((run_id, status))

    monkeypatch.setattr(pipeline, "interrupt_workers", lambda: None)
    before = signal.signal(signal.SIGTERM, _prefect_sigterm_handler)  # as during a flow
    try:
        with pytest.raises(TerminationSignal), pipeline._killed_on_interrupt(Track(), "r1"):
            raise TerminationSignal(signal=signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
        progress.interrupt(False)
    assert closed == [("r1", "KILLED")]


def test_ctrl_c_ends_the_pipelines_mlflow_run_killed(tmp_path, prefect_server, monkeypatch):
    """An interrupted flow's pipeline run stayed RUNNING in MLflow until the next flow reaped it."""
    import flows.pipeline
    from sublim import progress

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}}, git=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.pipeline, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(root)
    assert not progress.interrupted()  # the interrupt stopped this flow, not what the process runs next
    store = client(tracking_uri(root))
    runs = store.search_runs([store.get_experiment_by_name("sublim-mlp").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


@pytest.mark.parametrize("lost", [pytest.param(False, id="interrupt-reaches-the-flow"),
                                  pytest.param(True, id="interrupt-lost-on-its-way")])
def test_ctrl_c_stops_the_running_job_at_its_next_step(tmp_path, prefect_server, monkeypatch, lost):
    """A job in a task thread is out of Ctrl-C's reach: it ran to its end (42 s of an lm base's pretraining)
    before the command could exit. Now its loop stops at the next step: it publishes nothing and its MLflow run
    says it was interrupted. `lost`: the KeyboardInterrupt never reaches the flow's loop (twice on a loaded
    machine, the job and the flow ran on to their end; here something on the way keeps it, as a Prefect call
    running in the main thread keeps an exception as its result): the flow stops all the same."""
    import signal
    import threading

    import flows.pipeline
    from sublim import progress

    assert threading.current_thread() is threading.main_thread()  # where Python runs signal handlers
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0], "teacher": {"epochs": 3000}}}, git=False)
    began, taken, pressed = threading.Event(), [], []
    loop = progress.Silent.steps
    monkeypatch.setattr(progress, "_stop", threading.Event())  # this test's own: no other flow's interrupt leaks

    def watched(self, items, total, desc):
        for i, item in enumerate(loop(self, items, total, desc)):
            if desc.startswith("teacher"):
                taken.append(total)
                began.set()
            yield item

    def press() -> None:
        if began.wait(600):  # a loaded machine may take long to reach the loop; it is what is waited for
            pressed.append(len(taken))
            # a real SIGINT, as a terminal's Ctrl-C, sent to the main thread: a process-directed signal taken
            # by another thread would leave the main thread asleep in its wait on the futures (as would
            # interrupt_main()) until the job ended
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    monkeypatch.setattr(progress.Silent, "steps", watched)
    kept = []
    if lost:
        real = flows.pipeline.as_completed

        def keeps_the_interrupt(futures):
            while True:
                try:
                    return iter([next(real(futures))])
                except KeyboardInterrupt as exc:
                    kept.append(exc)

        monkeypatch.setattr(flows.pipeline, "as_completed", keeps_the_interrupt)
    threading.Thread(target=press, daemon=True).start()
    try:
        result = _run(root)
    except KeyboardInterrupt:
        result = None
    assert len(kept) == lost  # the variant's premise held: its interrupt was kept from the flow
    assert began.is_set(), "the teacher's loop never began"
    assert result is None, f"the flow ended without an interrupt; Ctrl-C at step {pressed} of {taken[:1]}"
    assert 0 < len(taken) < taken[0] // 10  # stopped early: a few of its 120,000 steps
    assert not (root / "models/mlp/s0/g0-shared").exists()  # nothing published
    store = client(tracking_uri(root))
    runs = {r.data.tags.get("sublim.job"): r for r in
            store.search_runs([store.get_experiment_by_name("sublim-mlp").experiment_id])}
    teacher = runs["mlp.teacher@s0.g0"]
    assert teacher.info.status == "KILLED" and teacher.data.tags["sublim.error"].startswith("Interrupted: ")
    assert runs[None].info.status == "KILLED"  # the pipeline run



GONE_SEMAPHORE = ("import multiprocessing.synchronize as s; "  # what a worker still starting met, its pool gone
                  "s.SemLock.__setstate__(object.__new__(s.Lock), (0, 1, 1, '/sublim-test-no-such-semaphore'))")


@pytest.mark.parametrize("code, silent", [
    pytest.param(GONE_SEMAPHORE, True, id="pool-gone"),
    pytest.param("raise KeyboardInterrupt", True, id="ctrl-c"),
    pytest.param("raise ValueError('a real error')", False, id="other-errors-still-shown")])
def test_a_worker_still_starting_when_the_command_ends_prints_nothing(code, silent):
    """A worker process still starting when `sublim flow --workers 2` ended on SIGTERM or Ctrl-C printed a
    traceback after `error: terminated` (its pool's semaphores were gone; reproduced 3 of 3 times on a loaded
    machine). It had no job yet: it now ends silently. Run as a spawned worker is (`--multiprocessing-fork`),
    importing the command's module first, as such a worker does."""
    import subprocess

    def start(*flag: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", f"import sublim.cli; {code}", *flag], cwd=REPO, text=True,
                              capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)

    worker = start("--multiprocessing-fork")
    assert worker.returncode != 0  # it still fails: only its traceback is gone
    assert (worker.stderr == "") is silent, worker.stderr
    assert "Traceback" in start().stderr  # not a worker: every error shows as before


@pytest.mark.parametrize("runtime", [
    pytest.param({}, id="one-worker"),
    # slow: two worker processes take ~40 s longer to start and stop on 2 cores
    pytest.param({"task_runner": "process", "max_workers": 2}, id="two-worker-processes", marks=pytest.mark.slow)])
def test_sigterm_stops_the_flow_as_ctrl_c_does(tmp_path, runtime):
    """A SIGTERM (a scheduler, `kill`, a cancelled CI job) killed `sublim flow` on the spot: no message, job
    runs left RUNNING; with worker processes the command waited for their jobs to end, and after a Ctrl-C it hung
    for good (multiprocessing's exit joined workers idle in their queue). Now the running jobs stop at their next
    step, their runs end KILLED, nothing half-written stays, and the command says so in one line, exit 143."""
    import signal
    import subprocess
    import time

    from tests.conftest import cli_env

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0, 1], "teacher": {"epochs": 3000}},
                                         "runtime": runtime})
    proc = subprocess.Popen([sys.executable, "-m", "sublim.cli", "flow", "mlp"], cwd=root,
                            env={**cli_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # its own group: see finally
    try:
        deadline = time.monotonic() + 600  # a loaded machine may take long to reach the teachers' loop
        while not list((root / "models/mlp").glob("s*/.tmp-g0-shared*")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(2)  # inside the loop: 3000 epochs would take minutes
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # it did not stop: not to train on for minutes, its workers included
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143 and err.splitlines() == ["error: terminated"], err  # a starting worker: silent
    assert time.monotonic() - stopped < 60  # not the teachers' end
    store = client(tracking_uri(root))
    runs = store.search_runs([store.get_experiment_by_name("sublim-mlp").experiment_id])
    teachers = [r for r in runs if (r.data.tags.get("sublim.job") or "").startswith("mlp.teacher")]
    assert teachers and {r.info.status for r in teachers} == {"KILLED"}
    assert {r.info.status for r in runs if r.data.tags.get("sublim.job") is None} == {"KILLED"}  # the pipeline's
    assert not list(root.rglob(".tmp-*")) and not (root / "models/mlp/s0/g0-shared").exists()
    import yaml  # the DVC helper (no SIGINT reaches it) wrote what had finished before the command ended

    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert "mlp_data" in stages and not any(name.startswith("mlp_teacher") for name in stages), list(stages)
