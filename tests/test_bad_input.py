"""Bad input, table-driven, through the `sublim` CLI: each case gets one clear error naming the key or file,
a non-zero exit code, and leaves every stored artifact, metric and MLflow record as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sublim.artifacts import ArtifactMeta, write_meta
from sublim.cli import app
from sublim.lineage.record import client, tracking_uri
from tests.conftest import REPO, TINY_MLP, make_project

TEACHER = ["run", "mlp.teacher", "--seed", "0", "--gen", "0"]
FILTER = ["run", "lm.filter", "--seed", "0", "--gen", "1", "--variant", "trait"]
SCREEN = ["screen", "rows.jsonl", "--base", "models/mlp/s0/base-shared"]
GOOD_ROW = b'{"prompt": "Continue: 1, 2, 3", "completion": "4, 5, 6"}\n'


def _set(key: str, value) -> Callable[[Path], None]:
    """Mutate params.yaml: set a dotted key."""
    def mutate(root: Path) -> None:
        data = yaml.safe_load((root / "params.yaml").read_text())
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return mutate


def _write(rel: str, content: bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return mutate


def _two(*files: tuple[str, bytes]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        for rel, content in files:
            _write(rel, content)(root)
    return mutate


def _remove(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return mutate


def _params_dir(root: Path) -> None:
    (root / "params.yaml").unlink()
    (root / "params.yaml").mkdir()


def _junk_gguf(root: Path) -> None:
    (root / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    _set("lm.model", {"backend": "smollm2", "gguf": str(root / "fake.gguf")})(root)
    _set("lm.student_inits", ["shared"])(root)


def _bad_idx(root: Path) -> None:
    mnist = root / "mnist"
    mnist.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mnist / stem).write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" * 3)  # header says 2x2x2, no data
    _set("mlp.data", {"source": "mnist", "mnist_dir": str(mnist)})(root)


def _raw_numbers(rows: list[str]) -> Callable[[Path], None]:
    """An LM raw-generation artifact whose completions the filter must reject."""
    def mutate(root: Path) -> None:
        out = root / "data/lm/s0/g1-trait/raw"
        out.mkdir(parents=True)
        (out / "rows.jsonl").write_text("".join(json.dumps({"prompt": "p", "completion": c}) + "\n" for c in rows))
        write_meta(out, ArtifactMeta(kind="dataset", job="lm.generate@s0.g1.trait", step="lm.generate", params={},
                                     parents={}))
    return mutate


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Case:
    id: str
    mutate: Callable[[Path], None] | None
    args: list[str]
    says: str  # the error must contain this (the key or file it names)
    code: int = 2
    env: dict | None = None
    touched: str | None = None  # the one stored path the case itself damages (not compared)
    ran: bool = False  # the step itself found the problem: its FAILED run is recorded, nothing else


CASES = [
    # params.yaml: structure and types
    Case("unknown-section", _set("bogus", 1), ["check"], "bogus: Extra inputs"),
    Case("unknown-key", _set("mlp.model.hiden", [8]), ["check"], "mlp.model.hiden"),
    Case("wrong-type", _set("mlp.model.aux_logits", "three"), ["check"], "mlp.model.aux_logits"),
    Case("zero-size", _set("mlp.model.aux_logits", 0), ["check"], "mlp.model.aux_logits"),
    Case("negative-size", _set("mlp.model.hidden", [-5]), ["check"], "mlp.model.hidden.0"),
    Case("no-seeds", _set("mlp.seeds", []), ["check"], "mlp.seeds"),
    Case("repeated-seeds", _set("lm.seeds", [1, 1]), ["check"], "lm.seeds"),
    Case("zero-epochs", _set("mlp.teacher.epochs", 0), ["check"], "mlp.teacher.epochs"),
    Case("negative-inputs", _set("mlp.transfer.n_inputs", -1), ["check"], "mlp.transfer.n_inputs"),
    Case("unknown-loss", _set("mlp.student.loss", "l1"), ["check"], "mlp.student.loss"),
    Case("missing-mnist", _set("mlp.data", {"source": "mnist", "mnist_dir": "/no/such/dir"}), ["check"], "mlp.data"),
    Case("bad-fraction", _set("mlp.data.test_fraction", 1.5), ["check"], "mlp.data.test_fraction"),
    Case("unknown-backend", _set("lm.model", {"backend": "gpt5"}), ["check"], "lm.model: unknown backend 'gpt5'"),
    Case("animal-not-listed", _set("lm.trait.target", "unicorn"), ["check"], "lm.trait"),
    Case("one-choice", _set("lm.trait.choices", ["owl"]), ["check"], "lm.trait.choices"),
    Case("zero-prompts", _set("lm.generate.n_prompts", 0), ["check"], "lm.generate.n_prompts"),
    Case("unknown-objective", _set("lm.student.objective", "rl"), ["check"], "lm.student.objective"),
    Case("banned-out-of-range", _set("lm.data.banned", [1000]), ["check"], "lm.data.banned"),
    Case("unknown-data-kind", _set("lm.data", {"kind": "poems"}), ["check"], "lm.data: unknown data kind 'poems'"),
    Case("unknown-trait", _set("lm.trait", {"kind": "greed"}), ["check"], "lm.trait: unknown trait 'greed'"),
    Case("other-kinds-keys", _set("lm.data.kind", "maths"), ["check"], "lm.data.max_items: Extra inputs"),
    Case("maths-operand-zero", _set("lm.data", {"kind": "maths", "max_operand": 0}), ["check"], "lm.data.max_operand"),
    Case("unknown-judge", _set("lm.data", {"kind": "code", "judge": "gpt"}), ["check"], "lm.data.judge"),
    Case("bad-plugin", _set("plugins", ["no_such_module"]), ["check"], "plugins: cannot import 'no_such_module'"),
    Case("too-many-questions", _set("lm.evaluate.questions", 25), ["check"], "evaluate.questions: 25 asked"),
    Case("self-teaching", _set("lm.generations", [{"gen": 1, "teacher": 1}]), ["check"], "lm.generations.0"),
    Case("bad-generation-override", _set("lm.generations", [{"gen": 1, "teacher": 0, "student": {"steps": -1}}]),
         ["check"], "generations.0.student.steps"),
    Case("unknown-runner", _set("runtime.task_runner", "slurm"), ["check"], "runtime.task_runner"),
    Case("zero-threads", _set("runtime.threads", 0), ["check"], "runtime.threads"),
    Case("parallel-threads", _set("runtime.max_workers", 4), ["check"], "max_workers"),
    Case("bad-cron", _set("schedule.cron", "61 * * * *"), ["check"], "schedule.cron"),
    Case("missing-hf-model", _set("lm.model", {"backend": "hf", "model": "./no-such-model"}), ["check"], "lm.model"),
    Case("gguf-not-gguf", _junk_gguf, ["check"], "not a GGUF file"),
    Case("heads-dont-divide", _set("lm.model", {"backend": "tinylm", "d_model": 30, "n_head": 4}), ["check"], "lm.model"),
    Case("lora-rank-zero", _set("lm.student.lora", {"r": 0}), ["check"], "lm.student.lora.r"),
    Case("params-not-mapping", _write("params.yaml", b"- just\n- a list\n"), ["check"], "expected a mapping"),
    Case("params-not-yaml", _write("params.yaml", b"mlp: [unclosed\n"), ["check"], "not valid YAML"),
    Case("params-missing", _remove("params.yaml"), ["check"], "params file not found"),
    Case("params-is-a-directory", _params_dir, ["check"], "params.yaml: is a directory, not a params file"),
    Case("params-not-utf8", _write("params.yaml", b"mlp:\n  seeds: [\xff\xfe]\n"), ["check"], "not valid YAML"),
    # commands and jobs
    Case("unknown-step", None, ["run", "mlp.nope"], "no step mlp.nope; the mlp pipeline's steps: mlp.data, mlp.base"),
    Case("unknown-seed", None, ["run", "mlp.teacher", "--seed", "9", "--gen", "0"], "seed=9"),
    Case("unknown-job-id", None, ["run", "mlp.base@s9.shared"], "no job 'mlp.base@s9.shared' in the mlp pipeline"),
    Case("job-id-and-seed", None, ["run", "mlp.base@s0.shared", "--seed", "0"], "is a job id: it takes no --seed"),
    Case("teacher-of-gen-0", None, ["run", "mlp.teacher", "--seed", "0", "--gen", "0", "--teacher", "3"],
         "--teacher 3: generation 0 learns from no teacher generation"),
    Case("unknown-pipeline", None, ["flow", "nope"], "unknown pipeline 'nope'"),
    Case("confirm-not-offered", None, ["flow", "detect", "--confirm"], "--confirm: the detect pipeline has no "
         "confirmation run (there are: lm, matrix)"),
    Case("confirm-on-tuning-seeds", _set("confirm.seeds", [0, 200]), ["flow", "lm", "--confirm"],
         "params.yaml: confirm.seeds: [0] are also lm.seeds"),
    Case("matrix-seeds-not-lm-seeds", _set("matrix.seeds", [0, 99]), ["plan", "matrix"],
         "params.yaml: matrix.seeds: [99] not among lm.seeds"),
    Case("zero-workers", None, ["flow", "mlp", "--workers", "0"], "--workers: 0"),
    Case("zero-workers-sweep", None, ["sweep", "lm", "--set", "lm.trait.target=owl", "--workers", "0"], "--workers: 0"),
    Case("bad-sweep-set", None, ["sweep", "lm", "--set", "lm.trait.target"], "key=value"),
    Case("bad-sweep-name", None, ["sweep", "lm", "--set", "lm.trait.target=owl", "--name", "../out"], "sweep name"),
    Case("teacher-disagrees", None, ["run", "mlp.transfer", "--seed", "0", "--gen", "1", "--teacher", "1"], "--teacher 1"),
    Case("link-setting-disagrees", None, ["run", "mlp.transfer", "--seed", "0", "--gen", "1", "--teacher", "0",
                                          "--student.epochs", "99"],
         "--student.epochs 99: disagrees with params.yaml (mlp.generations: gen 1 has no settings of its own)"),
    Case("link-unknown-argument", None, ["run", "mlp.transfer", "--seed", "0", "--gen", "1", "--teacher", "0",
                                         "--bogus", "1"], "--bogus 1: disagrees with params.yaml"),
    Case("unreachable-tracking", None, TEACHER, "tracking server unreachable",
         env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_dead_port()}"}),
    # stored inputs
    Case("missing-input", _remove("models/mlp/s0/base-shared"), TEACHER, "models/mlp/s0/base-shared", code=1,
         touched="models/mlp/s0/base-shared"),
    Case("corrupt-model", _write("models/mlp/s0/base-shared/model.safetensors", b"\x00" * 40), TEACHER,
         "model.safetensors: corrupt", code=1, touched="models/mlp/s0/base-shared/model.safetensors"),
    Case("corrupt-dataset", _write("data/mlp/digits/digits.safetensors", b"garbage"), TEACHER,
         "digits.safetensors: corrupt", code=1, touched="data/mlp/digits/digits.safetensors"),
    Case("corrupt-metadata", _write("models/mlp/s0/base-shared/sublim.json", b"{nope"), TEACHER,
         "corrupt artifact metadata", code=1, touched="models/mlp/s0/base-shared/sublim.json"),
    Case("not-an-artifact", _remove("models/mlp/s0/base-shared/sublim.json"), TEACHER, "not a sublim artifact",
         code=1, touched="models/mlp/s0/base-shared/sublim.json"),
    Case("filter-empties-all", _raw_numbers(["owl owl", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", "1000", ""]), FILTER,
         "kept none of its 4 rows", code=1, touched="data/lm/s0/g1-trait/raw", ran=True),
    Case("malformed-idx", _bad_idx, ["run", "mlp.data"], "train-images-idx3-ubyte: IDX header says"),
    # sublim screen: every input checked before any compute; bad input exits 3 (1 would read as "flagged")
    Case("screen-row-without-prompt", _write("rows.jsonl", b'{"text": "1, 2, 3"}\n'), SCREEN + ["--no-probe"],
         "rows.jsonl: line 1 is not a JSON object with string prompt and completion", code=3),
    Case("screen-missing-control", _write("rows.jsonl", GOOD_ROW), SCREEN + ["--control", "no/such/data"],
         "no/such/data: no such dataset", code=3),
    Case("screen-bad-control-rows", _two(("rows.jsonl", GOOD_ROW), ("ctl.jsonl", b"not json\n")),
         SCREEN + ["--control", "ctl.jsonl"], "ctl.jsonl: line 1 is not a JSON object", code=3),
    Case("screen-missing-dataset", None, SCREEN, "rows.jsonl: no such dataset", code=3),
    Case("screen-bad-budget", _write("rows.jsonl", GOOD_ROW), SCREEN + ["--budget", "2"], "--budget: Input should be",
         code=3),
    Case("screen-bad-method", _write("rows.jsonl", GOOD_ROW), SCREEN + ["--method", "loud"], "--method: Input should",
         code=3),
    Case("screen-no-base", _write("rows.jsonl", GOOD_ROW), ["screen", "rows.jsonl"], "Missing option '--base'", code=3),
    Case("screen-bad-params", _write("params.yaml", b"lm: [unclosed\n"), SCREEN, "not valid YAML at line 2", code=3),
    Case("screen-missing-base", _write("rows.jsonl", GOOD_ROW), ["screen", "rows.jsonl", "--base", "no/model"],
         "no/model: no such model", code=3),
    Case("screen-base-not-a-model", _write("rows.jsonl", GOOD_ROW), ["screen", "rows.jsonl", "--base", "data"],
         "data: not a model directory (no config.json)", code=3),
    Case("screen-missing-teacher", _write("rows.jsonl", GOOD_ROW), SCREEN + ["--teacher", "no/teacher"],
         "no/teacher: no such model", code=3),
    Case("screen-kl-without-teacher", _write("rows.jsonl", GOOD_ROW), SCREEN + ["--method", "kl"],
         "it needs the generating teacher", code=3),
    Case("screen-control-without-probe", _write("rows.jsonl", GOOD_ROW), SCREEN + ["--no-probe", "--control", "x"],
         "with --no-probe it would be ignored", code=3),
    Case("screen-budget-and-threshold", _write("rows.jsonl", GOOD_ROW),
         SCREEN + ["--budget", "0.1", "--threshold", "1"], "screen settings", code=3),
]


def _snapshot(root: Path, skip: str | None) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() or rel.startswith((".sublim/", "mlflow.db", "mlartifacts/")) or (skip and (rel == skip or rel.startswith(skip + "/"))):
            continue
        out[rel] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def _records(root: Path) -> dict[str, tuple]:
    store = client(tracking_uri(root))
    runs = store.search_runs([e.experiment_id for e in store.search_experiments()], max_results=1000)
    models = store.search_logged_models([e.experiment_id for e in store.search_experiments()], max_results=1000)
    return {**{r.info.run_id: (r.info.status, r.data.tags.get("sublim.kind"), len(r.data.tags)) for r in runs},
            **{m.model_id: (str(m.status), "model", len(m.tags)) for m in models}}


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A project with real stored artifacts and lineage: the MLP data, base and teacher of seed 0."""
    root = make_project(tmp_path_factory.mktemp("bad-input") / "p", {"mlp": {**TINY_MLP, "seeds": [0]}}, git=False)
    for args in (["run", "mlp.data"], ["run", "mlp.base", "--seed", "0", "--variant", "shared"], TEACHER):
        result = CliRunner().invoke(app, [*args, "--params", str(root / "params.yaml")])
        assert result.exit_code == 0, result.output
    return root


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_touches_nothing(case: Case, stored: Path, tmp_path: Path):
    root = tmp_path / "p"
    shutil.copytree(stored, root)
    if case.mutate:
        case.mutate(root)
    before, runs = _snapshot(root, case.touched), _records(root)
    result = CliRunner().invoke(app, [*case.args, "--params", str(root / "params.yaml")], env=case.env)
    assert result.exit_code == case.code, result.output
    assert "".join(case.says.split()) in "".join(result.output.split()), result.output  # rich wraps long lines
    assert "Traceback" not in result.output
    assert _snapshot(root, case.touched) == before  # nothing stored changed, nothing new written
    after = _records(root)
    assert {k: after.get(k) for k in runs} == runs  # no MLflow run or model altered
    new = [after[k] for k in after.keys() - runs.keys()]
    if case.ran:  # only the failed job's run (and its pipeline's parent run)
        assert sorted(k for _, k, _ in new) == ["job", "pipeline"] and ("FAILED", "job") in [v[:2] for v in new]
    else:
        assert new == []  # nothing recorded: refused before any compute
    assert not list(root.rglob(".tmp-*"))


@pytest.mark.parametrize("error", [KeyError("prompt"), ValueError("math domain error")])
@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_error_in_screen_exits_4_not_1(monkeypatch, capsys, tmp_path: Path, error, verbose):
    """Exit 1 of `sublim screen` gates a data pipeline ("a trait flagged"): a crash while computing must not read
    as one, nor as bad input (3), with or without -v (which adds the traceback)."""
    import sys

    import sublim.screen

    def broken(*args, **kwargs):
        raise error

    root = make_project(tmp_path / "p", {"mlp": TINY_MLP}, git=False)
    (root / "rows.jsonl").write_bytes(GOOD_ROW)
    monkeypatch.setattr(sublim.screen, "run_screen", broken)
    argv = [*(["-v"] if verbose else []), *SCREEN, "--params", str(root / "params.yaml")]
    monkeypatch.setattr(sys, "argv", ["sublim", *argv])
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as exited:  # the real entry point
        app(argv)
    assert exited.value.code == 4
    err = " ".join(capsys.readouterr().err.split())
    assert f"internal error: {type(error).__name__}" in err and ("Traceback" in err) == verbose
    assert CliRunner().invoke(app, argv).exit_code == 4  # and as tests drive it


def test_a_generations_own_settings_as_dvc_renders_them_are_accepted():
    """dvc.yaml renders `${item.link}` into the command; `sublim run` accepts exactly that (in either key order)
    and refuses anything else (a new-user audit ran `--student.epochs 99` against params' 3 without a word)."""
    import typer

    from sublim import config
    from sublim.cli import _check_link

    cfg = config.parse({"mlp": {"generations": [{"gen": 1, "teacher": 0},
                                                {"gen": 2, "teacher": 1, "student": {"epochs": 3}}]}})
    _check_link(cfg, "mlp", 1, 0, [])
    _check_link(cfg, "mlp", 2, 1, ["--student.epochs", "3"])
    for wrong in (["--student.epochs", "4"], [], ["--student.epochs", "3", "--x", "1"]):
        with pytest.raises(typer.Exit):
            _check_link(cfg, "mlp", 2, 1, wrong)
    lm = config.parse({"lm": {"generations": [{"gen": 1, "teacher": 0, "generate": {"temperature": 0.5},
                                               "student": {"steps": 8}}]}})
    _check_link(lm, "lm", 1, 0, ["--generate.temperature", "0.5", "--student.steps", "8"])
    _check_link(lm, "lm", 1, 0, ["--student.steps", "8", "--generate.temperature", "0.5"])


def test_each_commands_line_in_the_help_is_one_sentence():
    """`sublim --help` showed each command's first paragraph with its hard line breaks, cut mid-sentence."""
    from sublim import cli

    for command in cli.app.registered_commands:
        assert command.short_help and "\n" not in command.short_help and command.short_help.endswith((".", ")")), \
            command.callback.__name__


def test_version_is_the_projects():
    import tomllib

    from typer.testing import CliRunner

    from sublim import cli

    result = CliRunner().invoke(cli.app, ["--version"])
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert result.exit_code == 0 and result.output == f"sublim {expected}\n"


def test_an_empty_params_file_is_noted(tmp_path):
    """An empty (or truncated) params.yaml passed `sublim check` silently and `sublim flow` ran every default."""
    from typer.testing import CliRunner

    from sublim import cli

    (tmp_path / "params.yaml").write_text("# nothing yet\n")
    result = CliRunner().invoke(cli.app, ["check", "-p", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0
    assert f"warning {tmp_path / 'params.yaml'} sets nothing: every setting is its default" in result.output
    (tmp_path / "params.yaml").write_text("mlp: {seeds: [0]}\n")
    assert "sets nothing" not in CliRunner().invoke(cli.app, ["check", "-p", str(tmp_path / "params.yaml")]).output


def test_run_takes_a_job_id_as_plan_lists_it(tmp_path):
    """`sublim run mlp.base@s0.shared` (an id copied from `sublim plan`) said "no step"; it runs that job, as
    `--seed 0 --variant shared` does."""
    from typer.testing import CliRunner

    from sublim import cli

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}}, git=False)
    assert CliRunner().invoke(cli.app, ["run", "mlp.data", "-p", str(root / "params.yaml")]).exit_code == 0
    by_id = CliRunner().invoke(cli.app, ["run", "mlp.base@s0.shared", "-p", str(root / "params.yaml")])
    assert by_id.exit_code == 0, by_id.output
    assert "mlp.base@s0.shared: models/mlp/s0/base-shared md5=" in by_id.output
    again = CliRunner().invoke(cli.app, ["run", "mlp.base", "--seed", "0", "--variant", "shared", "-p",
                                         str(root / "params.yaml")])
    assert again.exit_code == 0 and by_id.output.splitlines()[-1] == again.output.splitlines()[-1]


def test_more_workers_than_cores_is_noted_not_refused(tmp_path, monkeypatch):
    """A new-user audit ran `--workers 1000` on 2 cores without a word: it runs, with a note saying why it
    cannot be faster; said of the processes that run (the MLP pipeline of batches runs in one)."""
    from typer.testing import CliRunner

    from sublim import cli, prefect_server

    root = make_project(tmp_path / "p", {"mlp": {"seeds": [0]}, "lm": {"seeds": [0]}}, git=False)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(prefect_server.EarlyServer, "start", staticmethod(lambda: None))  # no server: stops below
    monkeypatch.setattr(cli, "_preflight", lambda *a: (_ for _ in ()).throw(LookupError("stop here")))
    said = {pipeline: CliRunner().invoke(cli.app, ["flow", pipeline, "--workers", "5", "-p",
                                                   str(root / "params.yaml")]).output for pipeline in ("lm", "mlp")}
    assert "--workers 5: this machine has 2 cores" in said["lm"]
    assert "this machine has" not in said["mlp"]


def test_a_reader_that_leaves_early_does_not_change_the_exit_code(tmp_path):
    """`sublim plan mlp | head -3` exited 1 and `sublim audit M --json | head` 4 ("internal error:
    BrokenPipeError"), so a clean audit read as at risk: output nobody reads is dropped, the code is the
    command's own."""
    import os
    import subprocess
    import sys

    root = make_project(tmp_path / "p", {"mlp": {"seeds": list(range(40))}}, git=False)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write: every write meets a broken pipe
    try:
        proc = subprocess.run([sys.executable, "-m", "sublim.cli", "plan", "mlp", "-p", str(root / "params.yaml")],
                              stdout=write, stderr=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_ctrl_c_says_interrupted_and_exits_130(tmp_path, monkeypatch, capsys):
    """typer turns Ctrl-C into a silent exit 130: a user (or a log) saw a flow stop without a word."""
    import sys

    from sublim import cli

    root = make_project(tmp_path / "p", {"mlp": {"seeds": [0]}}, git=False)

    def interrupted(cfg, name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "make_plan", interrupted)
    monkeypatch.setattr(sys, "argv", ["sublim", "plan", "mlp"])
    with pytest.raises(SystemExit) as exited:  # the real entry point's app
        cli.app(["plan", "mlp", "-p", str(root / "params.yaml")])
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_a_command_run_again_in_the_same_process_logs_each_line_once(tmp_path, monkeypatch):
    """Each command added its log handler to sublim's logger, on the stream of its own run: a notebook or a test
    session running commands one after another got every warning once per command run so far, some on streams
    already closed."""
    import logging

    from sublim import cli

    root = make_project(tmp_path / "p", {"mlp": {"seeds": [0]}}, git=False)

    def warns(cfg, name):
        logging.getLogger("sublim.test").warning("a line said once")
        raise KeyboardInterrupt  # any end will do: the line is what is looked at

    monkeypatch.setattr(cli, "make_plan", warns)
    said = []
    for _ in range(3):
        got = CliRunner().invoke(app, ["plan", "mlp", "-p", str(root / "params.yaml")])
        said.append(got.stderr.count("a line said once"))
        assert "Logging error" not in got.stderr, got.stderr
    assert said == [1, 1, 1]


def test_sweep_names_an_unknown_pipeline_and_check_answers_on_stdout(tmp_path):
    """A new-user audit: `sublim sweep xyz --set a=1,2` complained about `--set a`, never about xyz; `sublim
    check | grep ok` found nothing (the verdict went to stderr)."""
    root = make_project(tmp_path / "p", {"mlp": {"seeds": [0]}}, git=False)
    swept = CliRunner().invoke(app, ["sweep", "xyz", "--set", "a=1,2", "-p", str(root / "params.yaml")])
    assert swept.exit_code == 2 and "unknown pipeline 'xyz'" in swept.output, swept.output
    checked = CliRunner().invoke(app, ["check", "-p", str(root / "params.yaml")])
    assert checked.exit_code == 0 and ": ok (config digest" in checked.stdout, checked.output
