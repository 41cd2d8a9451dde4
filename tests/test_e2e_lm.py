"""The language-model pipeline end to end at toy size: two generations through the Prefect flow, lineage and
audit across generations, the model registry, and DVC seeing exactly which generations a change touches."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from sublim import config
from sublim.lineage.audit import CLEAN, audit
from sublim.lineage.query import Lineage, resolve
from sublim.lineage.record import client as MlflowClient, tracking_uri
from tests.conftest import TINY_LM, cli_env, deep_update, make_project

CHAIN = [{"gen": 1, "teacher": 0}, {"gen": 2, "teacher": 1}]
pytestmark = pytest.mark.slow  # two generations through the flow (~4 min on 2 busy cores): `make test-slow`


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, prefect_server):
    from flows.pipeline import build

    root = make_project(tmp_path_factory.mktemp("e2e-lm"), {"lm": deep_update(TINY_LM, {"generations": CHAIN})})
    result = build(config.load(root / "params.yaml"))(pipeline="lm", params=str(root / "params.yaml"))
    return root, result


def test_every_job_finishes_and_the_decay_curve_is_reported(flow_run):
    root, result = flow_run
    assert result["missing"] == []
    m = json.loads((root / "metrics/lm.json").read_text())
    assert {"g0-trait", "g1-trait", "g2-trait", "g2-control"} <= set(m["generations"])
    assert (root / "reports/lm/generations.png").exists()
    assert (root / "reports/lineage/lm/lineage.png").stat().st_size > 5000  # the experiment's lineage picture
    assert "-. data .->" in (root / "reports/lineage/lm/lineage.mmd").read_text()
    assert "owl" in result["summary"]


def test_audit_across_generations(flow_run):
    root, _ = flow_run
    lin = Lineage(MlflowClient(tracking_uri(root)))

    def check(path: str):  # toy evaluations (3 samples x 4 questions) are noise: judge declared traits here
        return audit(lin, resolve(path, lin, root), threshold=0.5)

    report = check("models/lm/s0/g2-trait-shared")
    risky = {e.teacher.tag("path"): e.hops for e in report.exposures if e.at_risk}
    assert risky == {"models/lm/s0/g0-trait-shared": 2} and "owl" in report.at_risk  # two data hops, shared init
    assert "models/lm/s0/g1-trait-shared" in {e.teacher.tag("path") for e in report.exposures}
    assert report.unknowns == []  # the bases' synthetic corpora and the teachers' Q/A are recorded origins
    assert check("models/lm/s0/g2-trait-other").verdict == CLEAN  # a different init: the paper's condition fails
    control = check("models/lm/s0/g2-control-shared")
    assert control.verdict == CLEAN and all(not e.traits for e in control.exposures)
    down = {h.node.tag("path") for h in lin.descendants(resolve("models/lm/s0/g0-trait-shared", lin, root))}
    assert {"models/lm/s0/g1-trait-shared", "models/lm/s0/g2-trait-shared", "models/lm/s0/g2-trait-other"} <= down
    assert report.model.measured["p_owl"] > 0


def test_registry_aliases_point_at_the_latest_generation(flow_run):
    root, _ = flow_run
    client = MlflowClient(tracking_uri(root))
    latest = client.get_model_version_by_alias("sublim-lm-student-trait-shared", "latest-generation")
    assert latest.tags["sublim.generation"] == "2" and latest.tags["sublim.path"].endswith("g2-trait-shared")
    gen1 = client.get_model_version_by_alias("sublim-lm-student-trait-shared", "gen1")
    assert gen1.tags["sublim.generation"] == "1" and gen1.tags["sublim.path"].endswith("g1-trait-shared")
    for line in ("trait", "control"):  # one trait and one control teacher per seed, each line registered apart
        teachers = client.search_model_versions(f"name = 'sublim-lm-teacher-{line}-shared'")
        assert len(teachers) == 2 and all(v.tags["sublim.path"].endswith(f"g0-{line}-shared") for v in teachers)


def test_changing_one_generation_touches_only_it_and_later_ones(flow_run):
    root, _ = flow_run
    status = json.loads(subprocess.run(["dvc", "status", "--json"], cwd=root, env=cli_env(), capture_output=True,
                                       text=True).stdout)
    assert {k: v for k, v in status.items() if k.startswith("lm_")} == {}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lm"]["generations"][1]["student"] = {"steps": 5}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = subprocess.run(["dvc", "repro", "--dry", "lm_summary"], cwd=root, env=cli_env(), capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    rerun = {line.split("'")[1] for line in dry.stdout.splitlines() if line.startswith("Running stage")}
    students = {s for s in rerun if s.startswith("lm_student")}
    assert students and all("-link1-" in s for s in students), rerun
    assert not any("link0" in s for s in rerun) and "lm_base@shared" not in rerun
