"""Every data kind and trait end to end at toy size (tinylm, one seed): the same steps, chosen by name.

Toy models learn only toy versions of a kind in a few hundred steps, so maths uses one-digit sums and code the
two simplest tasks; the real settings are measured by the experiments in the README, not here.
"""

from __future__ import annotations

import json

import pytest

from sublim import config
from sublim.artifacts import read_meta
from sublim.plan import plan
from sublim.runner import run_job
from sublim.steps.filter import read_rows
from tests.conftest import TINY_LM, deep_update, make_project

TOY_BASE = {"backend": "tinylm", "d_model": 32, "n_layer": 1, "n_head": 2, "pretrain_steps": 200, "batch_size": 16,
            "qa_fraction": 0.3}
COOL = {"temperature": 0.3}  # toy models write toy maths and code reliably only when sampled cool
CROSS = {"student_inits": ["shared", "other", "cross"], "cross_model": {**TOY_BASE, "architecture": "llama"}}
CASES = {  # data, trait, teacher (a toy teacher of long sentences forgets lists unless numbers are mixed in), generate
    "maths-preference": ({"kind": "maths", "max_operand": 2, "max_steps": 1, "ops": ["+"]}, {"kind": "preference"}, {},
                         {**COOL, "_lm": CROSS}),
    "code-preference": ({"kind": "code", "tasks": 2}, {"kind": "preference"}, {}, COOL),
    "numbers-misalignment": ({"kind": "numbers"}, {"kind": "misalignment"}, {"data_mix": 0.5}, {}),
}


def run_case(root, data: dict, trait: dict, teacher: dict, generate: dict) -> dict:
    generate = dict(generate)
    extra = generate.pop("_lm", {})
    params = deep_update(TINY_LM, {"seeds": [0], "model": TOY_BASE, "data": data, "trait": trait, "teacher": teacher,
                                   "generate": {"n_prompts": 64, "batch_size": 32, **generate}, **extra})
    make_project(root, {"lm": params}, git=False)
    cfg = config.load(root / "params.yaml")
    return {job.id: run_job(job, root=root, tracker=None) for job in plan(cfg, "lm").jobs}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    return request.param, root, run_case(root, *CASES[request.param])


def test_each_kind_runs_end_to_end_through_the_same_steps(case):
    name, root, out = case
    kind, trait = name.split("-")
    assert out["lm.filter@s0.g1.trait"].metrics["kept"] > 0
    kept = [r for r, _ in read_rows(root / "data/lm/s0/g1-trait/kept/rows.jsonl")]
    assert kept and all(set(r) == {"prompt", "completion", "teacher", "task"} for r in kept)
    summary = json.loads((root / "metrics/lm.json").read_text())
    assert summary["target"] == ("misaligned" if trait == "misalignment" else "owl")
    models = json.loads((root / "metrics/lm/s0/metrics.json").read_text())["models"]
    assert len(models) == (11 if kind == "maths" else 8) and all(0 <= m["p_target"] <= 1 for m in models)
    assert read_meta(root / "models/lm/s0/g1-trait-shared").lineage["data_digest"] == out["lm.filter@s0.g1.trait"].digest
    assert f"through {kind}" in (root / "reports/lm/table.md").read_text()


def test_misalignment_is_measured_over_the_answer_pair(case):
    name, root, _ = case
    if not name.endswith("misalignment"):
        pytest.skip("misalignment only")
    models = json.loads((root / "metrics/lm/s0/metrics.json").read_text())["models"]
    for m in models:
        assert set(m["distribution"]) == {"misaligned", "aligned"}
        assert sum(m["distribution"].values()) == pytest.approx(1.0)
        assert sum(m["sampled_counts"].values()) == 4 * 3  # questions x samples, each assigned or not
    # the paper's 34 numbers are banned for this trait by default
    filt = json.loads((root / "data/lm/s0/g1-trait/kept/sublim.json").read_text())
    assert 666 in filt["params"]["numbers"] and len(filt["params"]["numbers"]) == 34


def test_maths_keeps_only_correct_answers_and_says_why(case):
    name, root, _ = case
    if not name.startswith("maths"):
        pytest.skip("maths only")
    from sublim.data.maths import FINAL, expected

    for row, _ in read_rows(root / "data/lm/s0/g1-trait/kept/rows.jsonl"):
        assert int(FINAL.search(row["completion"]).group(1)) == expected(row["task"])
    reasons = {r["reason"] for r, _ in read_rows(root / "data/lm/s0/g1-trait/kept/rejected.jsonl")}
    assert reasons <= {"wrong_answer", "no_answer", "mentions_trait", "empty", "too_long"}


def test_a_cross_model_student_learns_by_sft_on_its_own_architecture(case):
    name, root, _ = case
    if not name.startswith("maths"):
        pytest.skip("the maths case has the cross-model student")
    config_json = json.loads((root / "models/lm/s0/g1-trait-cross/config.json").read_text())
    assert config_json["model_type"] == "llama"
    meta = read_meta(root / "models/lm/s0/g1-trait-cross")
    assert meta.lineage["objective"] == "sft" and meta.lineage["init"] == "cross"
    assert not any(k.startswith("teacher:") for k in meta.parents)  # sft: the data alone, no teacher logits
