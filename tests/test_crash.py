"""Crash anywhere, resume cleanly: SIGKILL inside each stage in turn, then rerun. The result has the digests of
an uninterrupted run, no partial files, no MLflow run left RUNNING, and no lineage record naming a missing or
different artifact."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from sublim.artifacts import digest
from sublim.lineage.record import client, tracking_uri
from tests.conftest import REPO, TINY_LM, TINY_MLP, cli_env, deep_update, make_project

DRIVER = [sys.executable, str(REPO / "tests" / "crash_driver.py")]
PIPELINES = {
    "mlp": ({"mlp": {**TINY_MLP, "seeds": [0]}},
            ["data", "base", "teacher", "transfer", "student", "evaluate", "summary"]),
    "lm": ({"lm": deep_update(TINY_LM, {"seeds": [0], "student_inits": ["shared"]})},
           ["questions", "base", "teacher", "generate", "filter", "student", "evaluate", "summary"]),
}


def _drive(root, pipeline, *kill):
    return subprocess.run([*DRIVER, str(root), pipeline, *kill], cwd=root, env=cli_env(), capture_output=True,
                          text=True, timeout=600)


def _digests(root):
    outs = [p for top in ("data", "models", "metrics", "reports") for p in (root / top).rglob("sublim.json")]
    return {str(p.parent.relative_to(root)): digest(p.parent) for p in outs}


# mlp in `make test`; lm (a kill inside each of its stages, ~6 min on 2 busy cores) in `make test-slow`
@pytest.mark.parametrize("pipeline", ["mlp", pytest.param("lm", marks=pytest.mark.slow)])
def test_kill_inside_every_stage_then_resume(pipeline, tmp_path):
    params, steps = PIPELINES[pipeline]
    reference = make_project(tmp_path / "reference", params, git=False)
    assert _drive(reference, pipeline).returncode == 0
    root = make_project(tmp_path / "crashed", params, git=False)
    kills = [(s, "in-step") for s in steps]
    kills.insert(steps.index("student") + 1, ("student", "before-lineage"))  # hits the second student job
    for step, when in kills:
        proc = _drive(root, pipeline, step, when)
        assert proc.returncode == -signal.SIGKILL, (step, when, proc.stderr[-2000:])
    final = _drive(root, pipeline)
    assert final.returncode == 0, final.stderr[-3000:]
    # same bytes as the run nobody interrupted (and two fresh runs agree: CPU determinism)
    assert _digests(root) == _digests(reference)
    assert not [p for p in root.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    store = client(tracking_uri(root))
    exp = store.get_experiment_by_name(f"sublim-{pipeline}")
    runs = store.search_runs([exp.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == len(kills)  # every killed job's run was reaped; their reruns FINISHED
    for model in store.search_logged_models([exp.experiment_id], max_results=1000):
        path = root / model.tags["sublim.path"]
        if str(model.status).endswith("READY"):
            assert path.exists() and digest(path) == model.tags["sublim.digest"], model.name
    ready = {m.tags["sublim.path"] for m in store.search_logged_models([exp.experiment_id], max_results=1000)
             if str(m.status).endswith("READY")}
    assert ready == {p for p in _digests(root) if p.startswith("models/")}  # every model has its lineage record
