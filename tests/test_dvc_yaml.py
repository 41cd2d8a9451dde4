"""dvc.yaml and sublim.plan describe the same pipeline: same outputs, inputs covered, code deps listed."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from dvc.repo import Repo

from sublim import config
from sublim.job import get_step
from sublim.plan import plan
from tests.conftest import make_project

PIPELINES = ["mlp", "lm"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    chain = [{"gen": 1, "teacher": 0}, {"gen": 2, "teacher": 1, "student": {"steps": 7}}]
    params = {"mlp": {"seeds": [0, 3], "generations": chain}, "lm": {"seeds": [1, 2], "generations": chain}}
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
            for code in get_step(job.step_name).code:
                assert Path(code) in deps, f"{stage.addressing}: step code {code} is not a dep"
            for _, dest in job.files:
                assert dest in stages, f"{job.id}: published file {dest} is not a DVC output"
            argv = shlex.split(stage.cmd)
            assert argv[:3] == ["sublim", "run", job.step_name], stage.cmd


def test_no_stage_without_a_job(project):
    cfg = config.load(project / "params.yaml")
    outputs = {j.output for p in PIPELINES for j in plan(cfg, p).jobs}
    outputs |= {d for p in PIPELINES for j in plan(cfg, p).jobs for _, d in j.files}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                assert Path(str(out.def_path)) in outputs, f"{stage.addressing} writes {out.def_path}, no job does"
