"""The teacher x target matrix at toy size: one teacher per target per seed, students of each init, the
difference in differences with Holm over the animals, the interaction, teacher strengths and the heat map;
and the confirmation variant planned on its own seeds and paths."""

from __future__ import annotations

import json

import pytest

from sublim import config
from sublim.plan import plan
from sublim.runner import run_job
from tests.conftest import TINY_LM, make_project

TARGETS = ["owl", "cat", "dog"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("matrix"), {"lm": TINY_LM,
                                                           "matrix": {"targets": TARGETS, "seeds": [0, 1]}}, git=False)
    cfg = config.load(root / "params.yaml")
    return root, {job.id: run_job(job, root=root, tracker=None) for job in plan(cfg, "matrix").jobs}


def test_one_teacher_per_target_and_students_of_each_init(done):
    root, out = done
    teachers = sorted(j for j in out if j.startswith("matrix.teacher@s0"))
    assert teachers == [f"matrix.teacher@s0.g0.{t}" for t in sorted(TARGETS)]
    assert (root / "models/matrix/s1/g1-dog-other").exists()
    assert (root / "models/lm/s1/base-other").exists()  # the lm experiment's bases: one per seed and init
    assert "matrix.base@s1.other" not in out and "lm.base@s1.other" in out
    models = json.loads((root / "metrics/matrix/s0/metrics.json").read_text())["models"]
    assert len(models) == 3 + 6 and all(len(m["distribution"]) == 10 for m in models)  # full distributions


def test_difference_in_differences_and_interaction_are_reported(done):
    root, _ = done
    m = json.loads((root / "metrics/matrix.json").read_text())
    assert set(m["teacher_strength"]) == set(TARGETS) and isinstance(m["teacher_strength_similar"], bool)
    shared = m["shared_exact"]
    assert shared["animals"] == TARGETS and len(shared["holm"]["p_adjusted"]) == 3
    for row in shared["shift"].values():  # each column of the shift matrix sums to 0 over teachers
        assert len(row) == 10
    for choice in shared["choices"]:
        assert abs(sum(shared["shift"][t][choice] for t in TARGETS)) < 1e-9
    assert "pooled" in m["interaction"] and "other_sampled" in m
    assert (root / "reports/matrix/matrix.png").stat().st_size > 5000
    assert "animals moved specifically towards their" in (root / "reports/matrix/table.md").read_text()


def test_confirmation_runs_on_its_own_seeds_and_paths(tmp_path):
    cfg = config.parse({"lm": TINY_LM, "matrix": {"targets": TARGETS}, "confirm": {"seeds": [300, 301]}})
    jobs = plan(cfg, "matrix-confirm").jobs
    assert {j.seed for j in jobs if j.seed is not None} == {300, 301}
    assert all(str(j.output).startswith(("models/matrix-confirm", "data/matrix-confirm", "metrics/matrix-confirm",
                                         "reports/matrix-confirm", "models/lm-confirm/s")) for j in jobs)
    assert {str(j.output) for j in jobs if j.step == "base"} == {f"models/lm-confirm/s{s}/base-{i}" for s in (300, 301)
                                                                 for i in ("shared", "other")}
    assert jobs[-1].files[0][1].as_posix() == "metrics/matrix-confirm.json"
    lm = plan(cfg, "lm-confirm")
    assert lm.jobs[-1].files[0][1].as_posix() == "metrics/lm-confirm.json"


def test_matrix_seeds_must_have_lm_bases():
    cfg = config.parse({"lm": {"seeds": [0, 1]}, "matrix": {"seeds": [1, 7]}})
    with pytest.raises(config.ConfigError, match=r"matrix.seeds: \[7\] not among lm.seeds"):
        plan(cfg, "matrix")


def test_a_trait_without_the_varied_setting_is_refused_by_name():
    cfg = config.parse({"lm": {"trait": {"kind": "misalignment"}}})
    with pytest.raises(config.ConfigError, match="matrix.field: the misalignment trait has no setting 'target'"):
        plan(cfg, "matrix")
    plan(cfg, "lm")  # every other pipeline is fine


def test_each_matrix_model_is_recorded_with_its_own_targets_probability():
    """Lineage gets P(cat) for the cat line (it had P(owl) only) and every answer for a base, the baseline; the
    owl line and the lm pipeline's control line add nothing (a new-user audit)."""
    from sublim.steps.evaluate import own_answers

    dist = {"owl": 0.1, "cat": 0.2, "dog": 0.7}
    assert own_answers("owl", {"role": "teacher", "line": "cat"}, dist) == {"cat": 0.2}
    assert own_answers("owl", {"role": "student", "line": "owl"}, dist) == {}
    assert own_answers("owl", {"role": "teacher", "line": "control"}, dist) == {}
    assert own_answers("owl", {"role": "base", "line": None}, dist) == {"cat": 0.2, "dog": 0.7}
    assert own_answers("misaligned", {"role": "base"}, None) == {}


def test_a_field_that_does_not_set_the_measured_answer_is_refused():
    """`matrix.field: category` made every teacher an owl teacher and still reported per animal (a new-user
    audit); the varied setting must be what each line is measured by."""
    cfg = config.parse({"lm": TINY_LM, "matrix": {"targets": ["owl", "cat"], "field": "category", "seeds": [0, 1]}})
    with pytest.raises(config.ConfigError, match="matrix.field: varying 'category' does not change the answer"):
        plan(cfg, "matrix")
