"""Each MLP step at tiny size, through the same run_job the drivers use (no tracking here)."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sublim import config
from sublim.artifacts import ArtifactError, read_meta
from sublim.backends import mlp
from sublim.plan import plan
from sublim.runner import run_job
from tests.conftest import TINY_MLP, make_project


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """Run the whole tiny plan once; tests inspect what each step left."""
    root = make_project(tmp_path_factory.mktemp("mlp"), {"mlp": TINY_MLP}, git=False)
    cfg = config.load(root / "params.yaml")
    outcomes = {job.id: run_job(job, root=root, tracker=None) for job in plan(cfg, "mlp").jobs}
    return root, cfg, outcomes


def test_data_is_a_held_out_split(done):
    root, _, _ = done
    d = load_file(str(root / "data/mlp/digits" / mlp.DIGITS))
    assert d["x_train"].shape[1] == 64 and len(d["x_test"]) == 539
    assert float(d["x_train"].min()) == -1.0 and float(d["x_train"].max()) == 1.0  # the paper's [-1, 1] pixels


def test_inits_differ_per_variant_and_seed(done):
    root, _, _ = done
    w = {p: load_file(str(root / f"models/mlp/{p}" / mlp.WEIGHTS))["net.0.weight"]
         for p in ("s0/base-shared", "s0/base-other", "s1/base-shared")}
    assert not torch.equal(w["s0/base-shared"], w["s0/base-other"])
    assert not torch.equal(w["s0/base-shared"], w["s1/base-shared"])


def test_teacher_learns_digits_and_starts_from_its_base(done):
    root, _, outcomes = done
    meta = read_meta(root / "models/mlp/s0/g0-shared")
    assert meta.lineage["role"] == "teacher"
    assert meta.lineage["init_from"] == outcomes["mlp.base@s0.shared"].digest
    evals = json.loads((root / "metrics/mlp/s0/metrics.json").read_text())["models"]
    acc = {r["model"]: r["accuracy"] for r in evals}
    assert acc["models/mlp/s0/g0-shared"] > 0.6 > acc["models/mlp/s0/base-shared"]


def test_transfer_data_has_no_digits_and_no_class_logits(done):
    root, cfg, outcomes = done
    data = load_file(str(root / "data/mlp/s0/g1/transfer/transfer.safetensors"))
    assert set(data) == {"x", "aux"}
    assert data["aux"].shape == (cfg.mlp.transfer.n_inputs, cfg.mlp.model.aux_logits)
    assert float(data["x"].min()) >= -1.0 and float(data["x"].max()) <= 1.0
    assert float(data["x"].min()) < -0.9  # really the [-1, 1] noise, not pixels
    meta = read_meta(root / "data/mlp/s0/g1/transfer")
    assert meta.kind == "dataset" and meta.lineage["data_from"] == outcomes["mlp.teacher@s0.g0"].digest


def test_students_record_init_and_teacher(done):
    root, _, outcomes = done
    for init in ("shared", "other"):
        lin = read_meta(root / f"models/mlp/s0/g1-{init}").lineage
        assert lin["init_from"] == outcomes[f"mlp.base@s0.{init}"].digest
        assert lin["data_from"] == outcomes["mlp.teacher@s0.g0"].digest
        assert lin["data_digest"] == outcomes["mlp.transfer@s0.g1"].digest
        assert lin["role"] == ("student" if init == "shared" else "control")


def test_summary_metrics_file(done):
    root, _, _ = done
    m = json.loads((root / "metrics/mlp.json").read_text())
    for key in ("teacher_acc", "student_same_init_acc", "student_cross_init_acc"):
        assert 0.0 <= m[key] <= 1.0
        assert len(m[f"{key}_per_seed"]) == 2 and m[f"{key}_ci95"][0] <= m[key] <= m[f"{key}_ci95"][1]
    assert 0.0 <= m["p_value"] <= 1.0
    assert (root / "reports/mlp/accuracy.png").stat().st_size > 1000
    assert "teacher" in (root / "reports/mlp/table.md").read_text()


def test_one_seed_summary_shows_no_interval(tmp_path):
    """With one seed the summary gives each accuracy alone, not a zero-width interval read as certainty."""
    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}}, git=False)
    for job in plan(config.load(root / "params.yaml"), "mlp").jobs:
        run_job(job, root=root, tracker=None)
    m = json.loads((root / "metrics/mlp.json").read_text())
    assert m["n_seeds"] == 1 and m["teacher_acc_per_seed"] == [m["teacher_acc"]]
    assert m["teacher_acc_ci95"] is None and m["student_cross_init_acc_ci95"] is None
    table = (root / "reports/mlp/table.md").read_text()
    assert table.count("(one seed: no interval)") == 5  # two bases, the teacher, the two students
    assert f"{m['teacher_acc']:.3f} [" not in table


def test_same_params_same_digests(done, tmp_path):
    root, cfg, outcomes = done
    again = make_project(tmp_path / "again", {"mlp": TINY_MLP}, git=False)
    jobs = plan(cfg, "mlp")
    target = jobs.get("mlp.student@s1.g1.shared")
    for job in jobs.jobs:
        out = run_job(job, root=again, tracker=None)
        assert out.digest == outcomes[job.id].digest, job.id
        if job is target:
            break


def test_missing_input_is_named_before_compute(tmp_path):
    root = make_project(tmp_path / "p", {"mlp": TINY_MLP}, git=False)
    job = plan(config.load(root / "params.yaml"), "mlp").get("mlp.teacher@s0.g0")
    with pytest.raises(ArtifactError, match="models/mlp/s0/base-shared: input 'init'"):
        run_job(job, root=root, tracker=None)
    assert not (root / "models/mlp/s0/g0-shared").exists()


def _idx(shape: tuple[int, ...], data: bytes) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + data


def test_mnist_idx_files_load_and_malformed_ones_are_named(tmp_path):
    rng = np.random.default_rng(0)
    for stem, shape in (("train-images-idx3-ubyte", (6, 28, 28)), ("t10k-images-idx3-ubyte", (4, 28, 28)),
                        ("train-labels-idx1-ubyte", (6,)), ("t10k-labels-idx1-ubyte", (4,))):
        arr = rng.integers(0, 10 if "labels" in stem else 256, size=shape, dtype=np.uint8)
        (tmp_path / (stem + ".gz")).write_bytes(gzip.compress(_idx(shape, arr.tobytes())))
    split = mlp.load_digits("mnist", tmp_path, 0.3, 0)
    assert split["x_train"].shape == (6, 784) and split["y_test"].shape == (4,)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx((9,), b"\x01" * 4)))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: IDX header says"):
        mlp.load_digits("mnist", tmp_path, 0.3, 0)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"GARBAGE!"))
    with pytest.raises(ValueError, match="bad magic"):
        mlp.load_digits("mnist", tmp_path, 0.3, 0)
