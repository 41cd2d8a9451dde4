"""The sweep table's curve: a numeric swept setting on x, a curve per measure and per value of the others."""

from __future__ import annotations

from sublim.steps.effects import curves, parse_point


def test_point_names_split_only_before_a_key():
    assert parse_point("mlp.model.aux_logits=10,mlp.student.loss=kl") == {"mlp.model.aux_logits": "10",
                                                                           "mlp.student.loss": "kl"}
    assert parse_point("lm.student_inits=[shared, other],lm.seed=2") == {"lm.student_inits": "[shared, other]",
                                                                        "lm.seed": "2"}


def test_curves_over_the_numeric_setting_one_per_other_value():
    points = [f"mlp.model.aux_logits={m},mlp.student.loss={loss}" for m in (1, 3, 10) for loss in ("kl", "mse")]
    summaries = {p: {"student_same_init_acc": 0.1 * i, "student_same_init_acc_ci95": [0.1 * i - 0.05, 0.1 * i + 0.05]}
                 for i, p in enumerate(points)}
    key, series = curves("mlp", [{"point": p} for p in points], summaries)
    assert key == "mlp.model.aux_logits"
    assert set(series) == {"same-init student (loss=kl)", "same-init student (loss=mse)"}  # no CI: no curve
    assert sorted(series["same-init student (loss=mse)"]) == [1.0, 3.0, 10.0]
    assert series["same-init student (loss=mse)"][10.0].mean == summaries[points[5]]["student_same_init_acc"]


def test_no_curve_without_a_numeric_setting_of_three_values():
    points = [f"lm.trait.target={t}" for t in ("owl", "cat", "dog")]
    assert curves("lm", [{"point": p} for p in points], {p: {} for p in points}) is None
