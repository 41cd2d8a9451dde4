"""Experiments on one pipeline in a fresh clone (issue 12): the clone's committed dvc.lock names the other
pipeline's outputs, whose cache is absent (never pushed, or pushed to a remote this machine cannot reach).
After `sublim flow mlp`, `dvc exp run -S mlp.model.aux_logits=... mlp_summary` must run and save.

The cause was dvc.yaml's top-level plots: `dvc exp run` resolves every plot path, and a plot inside a
DVC-cached folder (reports/lm) makes DVC load that folder's object from the cache or remote. The reports are
small, so they are git-tracked outputs (cache: false), like the metrics files; the old layout is kept here as
a case to show the test reproduces the failure."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_MLP, cli_env, make_project

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _sh(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env={**cli_env(), **GIT_ENV}, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _origin(path: Path, cached_reports: bool) -> Path:
    """A project whose committed dvc.lock records an LM summary (its outputs only in the origin's cache)."""
    root = make_project(path, {"mlp": {**TINY_MLP, "seeds": [0]}})
    if cached_reports:  # the layout before the fix
        yaml = root / "dvc.yaml"
        yaml.write_text(yaml.read_text().replace("reports/lm: {cache: false}", "reports/lm")
                        .replace("reports/mlp: {cache: false}", "reports/mlp"))
    _sh(root, "sublim", "code")
    (root / "metrics/lm/s0").mkdir(parents=True)
    (root / "metrics/lm/s0/metrics.json").write_text("{}")
    (root / "reports/lm").mkdir(parents=True)
    (root / "reports/lm/per_seed.csv").write_text("seed,model,p_target,sampled_rate\n0,m,0.1,0.1\n")
    (root / "reports/lm/trait.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "metrics/lm.json").write_text(json.dumps({"p_student": 0.1}))
    _sh(root, "dvc", "commit", "-f", "-q", "lm_summary")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "commit", "-qm", "results of an LM run")
    return root


@pytest.mark.slow  # two fresh clones, each with flows and `dvc exp run` (~6 min on 2 busy cores): `make test-slow`
@pytest.mark.parametrize("cached_reports", [False, True], ids=["reports-in-git", "reports-in-dvc-cache (before)"])
def test_experiment_on_one_pipeline_in_a_fresh_clone(tmp_path, cached_reports):
    origin = _origin(tmp_path / "origin", cached_reports)
    clone = tmp_path / "clone"
    _sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / ".dvc" / "cache").exists()  # nothing of the LM run's cache came along
    _sh(clone, "sublim", "flow", "mlp")
    proc = _sh(clone, "dvc", "exp", "run", "-S", "mlp.model.aux_logits=5", "mlp_summary", check=not cached_reports)
    if cached_reports:
        assert proc.returncode != 0 and "failed to load directory ('reports', 'lm')" in proc.stderr
        return
    shown = json.loads(_sh(clone, "dvc", "exp", "show", "--json").stdout)
    experiments = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert experiments, shown  # the experiment was saved
    params = json.loads(_sh(clone, "dvc", "params", "diff", "--json").stdout or "{}")
    assert (clone / "reports/mlp/accuracy.png").exists() and "aux_logits" in json.dumps(params) or experiments
