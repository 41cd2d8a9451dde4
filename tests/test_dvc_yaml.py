"""dvc.yaml and sublim.plan describe the same pipeline: same outputs, inputs covered, each stage depending on its
step's derived code manifest; and by behaviour: editing one source or prompt file reruns exactly the stages
whose code uses it."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from dvc.repo import Repo

from sublim import config
from sublim.code import MANIFESTS, manifest_path
from sublim.job import Role
from sublim.plan import DVC_PIPELINES, plan
from tests.conftest import TINY_MLP, cli_env, make_project

PIPELINES = list(DVC_PIPELINES)


@pytest.fixture(scope="module", params=[[], ["screen"]], ids=["no-screen", "screen-stage"])
def project(tmp_path_factory, request):
    """With and without the screen stage (lm.screen.stage), which puts a job between filtering and students."""
    chain = [{"gen": 1, "teacher": 0}, {"gen": 2, "teacher": 1, "student": {"steps": 7}}]
    mlp_chain = [{"gen": 1, "teacher": 0}, {"gen": 2, "teacher": 1, "student": {"epochs": 2}}]
    params = {"mlp": {"seeds": [0, 3], "generations": mlp_chain},
              "lm": {"seeds": [1, 2], "generations": chain, "screen": {"stage": request.param}},
              "matrix": {"seeds": [2]}}  # the matrix trains on the lm bases of its seeds
    return make_project(tmp_path_factory.mktemp("dvcyaml"), params)


def covered(path: Path, deps: set[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_every_job_is_a_dvc_stage_with_the_same_paths(project, pipeline):
    cfg = config.load(project / "params.yaml")
    with Repo(str(project)) as repo:
        stages = {Path(str(o.def_path)): s for s in repo.index.stages for o in s.outs}
        for job in plan(cfg, pipeline).jobs:
            assert job.output in stages, f"{job.id}: no DVC stage writes {job.output}"
            stage = stages[job.output]
            deps = {Path(str(d.def_path)) for d in stage.deps}
            for name, path in job.inputs:
                assert covered(path, deps), f"{stage.addressing}: input {name}={path} of {job.id} is not a dep"
            assert manifest_path(job.step_name) in deps, f"{stage.addressing}: its code manifest is not a dep"
            for _, dest in job.files:
                assert dest in stages, f"{job.id}: published file {dest} is not a DVC output"
            argv = shlex.split(stage.cmd)
            assert argv[:3] == ["sublim", "run", f"{job.pipeline}.{job.step}"], stage.cmd


def test_no_stage_without_a_job(project):
    cfg = config.load(project / "params.yaml")
    screens = [j for p in PIPELINES for j in plan(cfg, p).jobs if j.step == "screen"]
    assert bool(screens) == bool(cfg.lm.screen.stage)  # the stage exists exactly when params turn it on
    outputs = {j.output for p in PIPELINES for j in plan(cfg, p).jobs}
    outputs |= {d for p in PIPELINES for j in plan(cfg, p).jobs for _, d in j.files}
    outputs.add(MANIFESTS)  # the `code` stage: every step's derived code dependencies
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                assert Path(str(out.def_path)) in outputs, f"{stage.addressing} writes {out.def_path}, no job does"


@pytest.mark.parametrize("pipeline, student, screen, upstream", [
    ("lm", "lm_student@1-link0-trait-shared", "lm_screen@1-link0-trait-screen", "lm_filter@1-link0-trait"),
    ("matrix", "matrix_student@2-owl-shared", "matrix_screen@2-owl-screen", "matrix_filter@2-owl")])
def test_students_train_after_the_screen_when_it_is_on(project, pipeline, student, screen, upstream):
    """In DVC's graph a student depends on the screen stage, and the screen on filtering, exactly when params turn
    the screen on; the plan feeds it screened/ then, kept/ otherwise (both under the folder its stage depends
    on), and the switch is one of its params, so turning the screen off reruns it on kept/."""
    cfg = config.load(project / "params.yaml")
    on = bool(cfg.lm.screen.stage)
    with Repo(str(project)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        named = {s.name: s for s in graph.nodes}
        before = {s.name for s in graph.successors(named[student])}
        assert (screen in before) == on and upstream in before
        if on:
            assert upstream in {s.name for s in graph.successors(named[screen])}
        assert "lm.screen.stage" in {k for p in named[student].params for k in p.params}
        out = Path(str(named[student].outs[0].def_path))
    [job] = [j for j in plan(cfg, pipeline).jobs if j.output == out]
    data = dict(job.inputs)[Role.DATA]
    assert data.name == ("screened" if on else "kept"), data


def _ran(root: Path, env: dict, *targets: str) -> set[str]:
    proc = subprocess.run(["dvc", "repro", *targets], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def _touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited by a test\n")


def test_editing_a_file_reruns_exactly_the_stages_using_it(tmp_path):
    """In a copy of the project whose own code runs (PYTHONPATH), edit one file at a time."""
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}})
    env = {**cli_env(), "PYTHONPATH": str(root)}
    target = "mlp_teacher@0"  # with its upstream: code, mlp_data, mlp_base@0-shared
    assert _ran(root, env, target) == {"code", "mlp_data", "mlp_base@0-shared", target}
    assert _ran(root, env, target) == {"code"}  # nothing else to redo
    _touch(root / "sublim/steps/teacher.py")
    assert _ran(root, env, target) == {"code", target}
    _touch(root / "sublim/data/maths.yaml")  # a prompt file no MLP step reads
    assert _ran(root, env, target) == {"code"}
    _touch(root / "sublim/backends/mlp.py")  # every MLP step imports it
    assert _ran(root, env, target) == {"code", "mlp_data", "mlp_base@0-shared", target}


def test_lm_code_manifests_follow_the_chosen_plug_ins(tmp_path):
    """Which LM steps a file reaches depends on the data kind and trait params.yaml chose."""
    root = make_project(tmp_path / "p", git=False)
    env = {**cli_env(), "PYTHONPATH": str(root)}

    def manifests() -> dict[str, str]:
        proc = subprocess.run(["sublim", "code"], cwd=root, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return {p.stem: p.read_text() for p in (root / ".sublim/code").glob("lm.*.txt")}

    before = manifests()
    assert "sublim/data/numbers.yaml" in before["lm.filter"] and "sublim/data/maths.py" not in before["lm.filter"]
    _touch(root / "sublim/data/maths.py")
    assert manifests() == before  # numbers data: maths code is used by no step
    _touch(root / "sublim/data/numbers.yaml")
    after = manifests()
    # lm.answer: the detection experiment's base answering the same prompts (its matched control data)
    assert {k for k in before if before[k] != after[k]} == {"lm.base", "lm.generate", "lm.filter", "lm.student", "lm.answer"}
    _touch(root / "sublim/traits/preference.yaml")
    changed = {k for k, v in manifests().items() if v != after[k]}
    # lm.probe: the screen's probe asks every registered trait's questions
    assert changed == {"lm.base", "lm.teacher", "lm.questions", "lm.evaluate", "lm.probe"}  # not the data's steps


def test_a_module_sets_closure_is_remembered_until_one_of_its_files_changes(tmp_path, monkeypatch):
    """Flows compute ~800 jobs' code closures from a few dozen module sets: remembered, but an edited file (a new
    import) is walked again."""
    import os

    from sublim import code

    pkg = tmp_path / "zpkg_closure"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("X = 1\n")
    (pkg / "b.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(code, "_CLOSURES", {})  # this test's walks stay out of the process-wide memo
    modules = frozenset({"zpkg_closure.a"})
    assert set(code._cached_closure(modules)) == {"zpkg_closure/__init__.py", "zpkg_closure/a.py"}
    assert code._cached_closure(modules) is code._cached_closure(modules)  # remembered
    (pkg / "a.py").write_text("from zpkg_closure import b\n")
    stat = (pkg / "a.py").stat()
    os.utime(pkg / "a.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime, even on coarse clocks
    assert "zpkg_closure/b.py" in code._cached_closure(modules)


def test_the_committed_dvc_lock_holds_the_manifests_this_code_writes(tmp_path):
    """A change to code a step uses must come with its stages rerun and dvc.lock committed: otherwise a fresh
    clone's `dvc status` lists them as changed, `dvc repro` and `dvc exp run` recompute them, and the demo's
    outputs cannot be checked against the lock. (A driver's code, as the CLI's or the flow's, is in no
    manifest: it changes no result.)"""
    import hashlib
    import os

    import yaml

    root = make_project(tmp_path / "p", git=False)
    proc = subprocess.run(["sublim", "code"], cwd=root, env={**cli_env(), "PYTHONPATH": str(root)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lock = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.lock").read_text())
    locked = {dep["path"]: dep["md5"] for stage in lock["stages"].values() for dep in stage.get("deps", [])
              if dep["path"].startswith(".sublim/code/")}
    assert locked, "dvc.lock names no code manifest"
    written = {path: hashlib.md5((root / path).read_bytes()).hexdigest() for path in locked
               if os.path.exists(root / path)}
    stale = sorted(path for path in locked if written.get(path) != locked[path])
    assert not stale, f"dvc.lock is stale for {stale}: rerun their stages (`dvc repro`) and commit dvc.lock"


def test_the_dvc_helper_parses_a_params_file_once_until_it_changes(tmp_path, monkeypatch):
    """The helper's parse cache (each stage's save re-read params.yaml): same content as DVC's own parse, a copy
    per caller, and a fresh parse once the file changes."""
    from dvc.dependency import param
    from dvc.fs import LocalFileSystem

    from sublim import dvc_sync

    original = param.load_path  # restored by monkeypatch after the test
    calls = []
    monkeypatch.setattr(param, "load_path", lambda path, fs, **kw: calls.append(path) or original(path, fs, **kw))
    dvc_sync._parse_params_once()
    file, fs = tmp_path / "params.yaml", LocalFileSystem()
    file.write_text("mlp:\n  seeds: [0, 1]\n")
    first = param.read_param_file(fs, str(file), ["mlp.seeds"], flatten=True)
    whole = param.read_param_file(fs, str(file))
    whole["mlp"]["seeds"].append(9)  # a caller's edit reaches no other caller
    assert first == {"mlp.seeds": [0, 1]} and param.read_param_file(fs, str(file)) == {"mlp": {"seeds": [0, 1]}}
    assert len(calls) == 1
    file.write_text("mlp:\n  seeds: [0, 1, 2]\n")
    assert param.read_param_file(fs, str(file), ["mlp.seeds"], flatten=True) == {"mlp.seeds": [0, 1, 2]}
    assert len(calls) == 2
