"""Shared fixtures: a throwaway sublim project (git + DVC) with tiny params, and one Prefect test server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use each project's embedded store

TINY_MLP = {
    "seeds": [0, 1],
    "model": {"hidden": [32], "aux_logits": 3},
    "teacher": {"epochs": 2, "lr": 0.003, "batch_size": 64},
    "transfer": {"n_inputs": 256},
    "student": {"epochs": 2, "batch_size": 32, "lr": 0.001},
}


def deep_update(base: dict, over: dict) -> dict:
    """`over` merged into `base`; a plug-in section naming its `backend` or `kind` replaces the base's (its keys
    differ)."""
    out = dict(base or {})
    for key, value in over.items():
        merge = isinstance(value, dict) and "backend" not in value and "kind" not in value
        out[key] = deep_update(out.get(key, {}), value) if merge else value
    return out


def make_project(path: Path, params: dict | None = None, *, git: bool = True) -> Path:
    """Copy the project's code, dvc.yaml and params.yaml into `path`, apply `params` overrides, init git+DVC."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("sublim", "flows"):
        shutil.copytree(REPO / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, path / name)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (path / "params.yaml").write_text(yaml.safe_dump(deep_update(base, params or {}), sort_keys=False))
    if git:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
        subprocess.run(["git", "init", "-q"], cwd=path, check=True)
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=path, check=True, env=env)
        subprocess.run(["git", "add", "-A"], cwd=path, check=True)
        subprocess.run(["git", "commit", "-qm", "init"], cwd=path, check=True, env=env)
    return path


def cli_env() -> dict[str, str]:
    """Environment for subprocesses (dvc repro, sublim): the venv's bin first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj", {"mlp": TINY_MLP})


@pytest.fixture(scope="session")
def prefect_server():
    """One ephemeral Prefect server for the whole session (it takes ~12 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield

TINY_LM = {
    # 150 steps: at 60, some seeds' teachers wrote no valid list in 48 rows (keep rates now 15-29%)
    "model": {"backend": "tinylm", "d_model": 32, "n_layer": 1, "n_head": 2, "pretrain_steps": 150, "batch_size": 16},
    "seeds": [0, 1],
    "teacher": {"steps": 10, "batch_size": 8},
    # temperature 0.5: a 60-step model at temperature 1 wrote no valid list in 48 rows for some seeds
    "generate": {"n_prompts": 48, "batch_size": 16, "temperature": 0.5},
    "student": {"steps": 8, "batch_size": 8},
    "evaluate": {"questions": 4, "samples": 3},
}


@pytest.fixture(scope="session")
def asker_dir(tmp_path_factory):
    """A tiny local Hugging Face model (hf backend: it follows prompts, so it can be asked or shown examples)."""
    from sublim.backends import tinylm
    from sublim.corpus import Corpus
    from sublim.data.numbers import Numbers, NumbersSpec
    from sublim.traits.preference import Preference, PreferenceSpec

    path = tmp_path_factory.mktemp("asker") / "model"
    path.mkdir()
    spec = tinylm.TinyLmSpec(d_model=32, n_layer=1, n_head=2, pretrain_steps=20, batch_size=8, context=1024)
    tinylm.TinyLm(spec).make_base(init="x", seed=0, corpus=Corpus([Numbers(NumbersSpec())],
                                                                  [Preference(PreferenceSpec())]), out=path)
    return path
