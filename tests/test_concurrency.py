"""Concurrency: three pipelines started at once on one project (the same embedded MLflow store and DVC cache):
two copies of the MLP pipeline and the LM pipeline. Writers take turns on the workspace lock (saying so), and
the store ends with correct, separate lineage and an intact database."""

from __future__ import annotations

import sqlite3

import pytest
import subprocess
import sys
from collections import Counter

from sublim.artifacts import digest
from sublim.lineage.record import client, tracking_uri
from tests.conftest import REPO, TINY_LM, TINY_MLP, cli_env, deep_update, make_project

DRIVER = [sys.executable, str(REPO / "tests" / "crash_driver.py")]


@pytest.mark.slow  # three pipelines at once (~3 min on 2 busy cores): `make test-slow`
def test_three_pipelines_at_once_share_one_store(tmp_path):
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]},
                                         "lm": deep_update(TINY_LM, {"seeds": [0], "student_inits": ["shared"]})},
                        git=False)
    procs = [subprocess.Popen([*DRIVER, str(root), pipeline], cwd=root, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for pipeline in ("mlp", "lm", "mlp")]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert any("another sublim pipeline is writing" in err for _, err in outputs)  # a clear message, then it waited
    db = root / "mlflow.db"
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = client(tracking_uri(root))
    for pipeline in ("mlp", "lm"):
        exp = store.get_experiment_by_name(f"sublim-{pipeline}")
        runs = store.search_runs([exp.experiment_id], max_results=1000)
        assert all(r.info.status == "FINISHED" for r in runs)
        models = [m for m in store.search_logged_models([exp.experiment_id], max_results=1000)]
        assert all(m.tags["sublim.pipeline"] == pipeline for m in models)  # separate lineage per pipeline
        assert max(Counter(m.tags["sublim.digest"] for m in models).values()) == 1  # one record per artifact
        by_digest = {m.tags["sublim.digest"] for m in models}
        for m in models:
            assert digest(root / m.tags["sublim.path"]) == m.tags["sublim.digest"]
            for parent in ("init_from", "data_from"):
                for d in filter(None, m.tags.get(f"sublim.{parent}", "").split(",")):
                    assert d in by_digest, (m.name, parent)  # lineage names recorded models only
