"""Remote data: `dvc push` / `dvc pull` move datasets and models, and the digests MLflow's lineage names are
the objects the remote holds."""

from __future__ import annotations

import shutil

import pytest
import subprocess

from sublim.artifacts import digest
from sublim.lineage.record import client, tracking_uri
from tests.conftest import REPO, TINY_MLP, cli_env, make_project


def _dvc(root, *args):
    proc = subprocess.run(["dvc", *args], cwd=root, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_project_has_a_default_local_remote():
    listed = _dvc(REPO, "remote", "list")
    assert "(default)" in listed and str(REPO / ".dvc-remote") in listed


@pytest.mark.slow  # a pipeline, push, a fresh clone and pull: `make test-slow`
def test_push_pull_round_trip_keeps_lineage_digests(tmp_path):
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}})
    _dvc(root, "repro", "mlp_teacher@0")
    _dvc(root, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    _dvc(root, "push", "--with-deps", "mlp_teacher@0")
    paths = ["data/mlp/digits", "models/mlp/s0/base-shared", "models/mlp/s0/g0-shared"]
    before = {p: digest(root / p) for p in paths}
    for md5 in before.values():  # DVC 3 layout: files/md5/<2>/<rest>
        assert (tmp_path / "remote" / "files" / "md5" / md5[:2] / md5[2:]).is_file(), md5
    lineage = client(tracking_uri(root))
    exp = lineage.get_experiment_by_name("sublim-mlp")
    recorded = {m.tags["sublim.path"]: m.tags["sublim.digest"] for m in lineage.search_logged_models([exp.experiment_id])}
    assert recorded["models/mlp/s0/g0-shared"] == before["models/mlp/s0/g0-shared"]
    for p in ("data", "models"):
        shutil.rmtree(root / p)
    shutil.rmtree(root / ".dvc" / "cache")
    _dvc(root, "pull", "--with-deps", "mlp_teacher@0")
    assert {p: digest(root / p) for p in paths} == before
    assert "up to date" in _dvc(root, "status", "mlp_teacher@0")
