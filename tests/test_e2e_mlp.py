"""End to end: the Prefect flow, MLflow lineage, and DVC reproducing the same digests."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from sublim import config
from sublim.artifacts import digest
from sublim.lineage.record import client as MlflowClient
from sublim.lineage.record import tracking_uri
from tests.conftest import TINY_MLP, cli_env, make_project


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, prefect_server):
    from flows.pipeline import build

    root = make_project(tmp_path_factory.mktemp("e2e"), {"mlp": TINY_MLP})
    cfg = config.load(root / "params.yaml")
    result = build(cfg)(pipeline="mlp", params=str(root / "params.yaml"))
    return root, result


def test_flow_finishes_every_job_and_writes_metrics(flow_run):
    root, result = flow_run
    assert result["missing"] == []
    assert len(result["outcomes"]) == 16
    m = json.loads((root / "metrics/mlp.json").read_text())
    assert {"teacher_acc", "student_same_init_acc", "student_cross_init_acc", "p_value"} <= set(m)
    assert "same-init student" in result["summary"]


def test_mlflow_lineage_tags(flow_run):
    root, result = flow_run
    client = MlflowClient(tracking_uri(root))
    exp = client.get_experiment_by_name("sublim-mlp")
    models = {m.tags["sublim.path"]: m for m in client.search_logged_models([exp.experiment_id], max_results=200)}
    assert len(models) == 2 * 5  # per seed: 2 bases, teacher, 2 students
    out = result["outcomes"]
    student = models["models/mlp/s1/g1-shared"]
    assert student.tags["sublim.role"] == "student"
    assert student.tags["sublim.digest"] == out["mlp.student@s1.g1.shared"].digest
    assert student.tags["sublim.init_from"] == out["mlp.base@s1.shared"].digest
    assert student.tags["sublim.data_from"] == out["mlp.teacher@s1.g0"].digest
    assert student.tags["sublim.data_digest"] == out["mlp.transfer@s1.g1"].digest
    assert student.tags["sublim.seed"] == "1"
    control = models["models/mlp/s1/g1-other"]
    assert control.tags["sublim.role"] == "control"
    assert control.tags["sublim.init_from"] == out["mlp.base@s1.other"].digest
    assert float(student.tags["sublim.measured.digit_accuracy"]) >= 0.0
    # runs: one per job, nested under the flow's pipeline run; datasets with digests and contexts
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`sublim.kind` = 'job'")
    assert len(runs) == 16 and all(r.info.status == "FINISHED" for r in runs)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    gen_run = client.get_run(out["mlp.transfer@s1.g1"].run_id)
    ctx = {d.dataset.digest: d.tags[0].value for d in gen_run.inputs.dataset_inputs}
    assert ctx == {out["mlp.transfer@s1.g1"].digest: "generated"}
    assert [m.model_id for m in gen_run.inputs.model_inputs] == [models["models/mlp/s1/g0-shared"].model_id]
    train_run = client.get_run(out["mlp.student@s1.g1.shared"].run_id)
    assert {d.tags[0].value for d in train_run.inputs.dataset_inputs} == {"training"}
    assert train_run.data.tags["sublim.git_commit"] != "unknown"
    versions = json.loads(train_run.data.tags["sublim.versions"])
    assert {"torch", "mlflow", "prefect", "dvc"} <= set(versions) and versions["torch"].startswith("2.")


def test_rerun_hits_the_cache_and_dvc_is_in_sync(flow_run):
    from flows.pipeline import build

    root, first = flow_run
    again = build(config.load(root / "params.yaml"))(pipeline="mlp", params=str(root / "params.yaml"))
    assert {k: o.digest for k, o in again["outcomes"].items()} == {k: o.digest for k, o in first["outcomes"].items()}
    assert {o.run_id for o in again["outcomes"].values()} == {o.run_id for o in first["outcomes"].values()}  # cached
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, env=cli_env(), capture_output=True, text=True)
    stale = {k: v for k, v in json.loads(status.stdout).items() if k.startswith("mlp_")}
    assert stale == {}, stale  # the flow's `dvc commit` left nothing of its pipeline to reproduce


def test_deleted_output_is_rebuilt(flow_run):
    from flows.pipeline import build

    root, first = flow_run
    shutil.rmtree(root / "models/mlp/s0/g1-other")
    again = build(config.load(root / "params.yaml"))(pipeline="mlp", params=str(root / "params.yaml"))
    assert again["outcomes"]["mlp.student@s0.g1.other"].run_id != first["outcomes"]["mlp.student@s0.g1.other"].run_id
    assert digest(root / "models/mlp/s0/g1-other") == first["outcomes"]["mlp.student@s0.g1.other"].digest


def test_dvc_repro_gives_the_flow_digests(flow_run, tmp_path):
    root, result = flow_run
    fresh = make_project(tmp_path / "fresh", {"mlp": TINY_MLP})
    target = "mlp_student@1-link0-shared"
    proc = subprocess.run(["dvc", "repro", target], cwd=fresh, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lock = yaml.safe_load((fresh / "dvc.lock").read_text())["stages"]
    produced = {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", [])}
    assert len(produced) == 6  # code manifests, digits, shared base, teacher, transfer data, student of seed 1
    for path, md5 in produced.items():
        assert md5 == digest(root / path), path
    assert produced["models/mlp/s1/g1-shared"] == result["outcomes"]["mlp.student@s1.g1.shared"].digest
