"""`sublim compare`: how much of a transfer effect a change removes, paired by seed, with Fieller's interval."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from sublim import compare as comparing
from sublim.cli import app
from sublim.stats import fieller_ratio, mean_ci


def test_fieller_with_a_constant_denominator_is_the_numerators_interval_scaled():
    a, b = [2.0] * 5, [0.9, 1.1, 1.4, 0.7, 1.0]
    r = fieller_ratio(a, b)
    ci = mean_ci(b)
    assert r.bounded and r.ratio == pytest.approx(np.mean(b) / 2)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.ci_low / 2, ci.ci_high / 2))


def test_fieller_bounds_solve_the_defining_equation_with_the_covariance():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.1, 8)
    b = 0.4 * a + rng.normal(0, 0.05, 8)
    r = fieller_ratio(a, b)
    n, t2 = len(a), sps.t.ppf(0.975, len(a) - 1) ** 2
    cov = np.cov(np.stack([a, b]), ddof=1) / n
    for bound in (r.ci_low, r.ci_high):
        lhs = (b.mean() - bound * a.mean()) ** 2
        rhs = t2 * (cov[1, 1] - 2 * bound * cov[0, 1] + bound ** 2 * cov[0, 0])
        assert lhs == pytest.approx(rhs)
    assert r.ci_low < r.ratio < r.ci_high


def test_fieller_is_unbounded_when_the_reference_effect_may_be_zero():
    r = fieller_ratio([0.02, -0.01, 0.015, -0.005, 0.001], [0.01, 0.0, 0.01, 0.0, 0.0])
    assert not r.bounded and r.ci_low is None and r.ci_high is None and r.ratio is not None


def _summary(path, student, control, seeds=None):
    data = {"p_student_per_seed": student, "p_control_student_per_seed": control}
    if seeds is not None:
        data["seeds"] = seeds
    path.write_text(json.dumps(data))
    return path


def test_share_removed_against_the_reference(tmp_path):
    ref = _summary(tmp_path / "raw.json", [0.30, 0.32, 0.28, 0.31, 0.29], [0.10] * 5, [0, 1, 2, 3, 4])
    half = _summary(tmp_path / "half.json", [0.20, 0.215, 0.19, 0.20, 0.195], [0.10] * 5, [0, 1, 2, 3, 4])
    rows = comparing.compare(comparing.read_run(ref), [comparing.read_run(half)])
    share, low, high = rows[1].share_removed()
    assert share == pytest.approx(1 - 0.1 / 0.2, abs=0.01)
    assert low < share < high
    assert rows[1].removed.diff.mean == pytest.approx(0.1) and rows[1].removed.p_value < 0.01


def test_cli_prints_the_table_and_json_and_names_bad_input(tmp_path):
    ref = _summary(tmp_path / "raw.json", [0.3, 0.32, 0.28], [0.1] * 3, [0, 1, 2])
    other = _summary(tmp_path / "masked.json", [0.2, 0.15, 0.18], [0.1] * 3, [0, 1, 2])
    runner = CliRunner()
    got = runner.invoke(app, ["compare", str(ref), str(other), "--label", "raw", "--label", "masked"])
    assert got.exit_code == 0, got.output
    assert "masked" in got.output and "share removed" in got.output
    got = runner.invoke(app, ["compare", str(ref), str(other), "--json"])
    share = json.loads(got.output)[1]["share_removed"]
    assert share == pytest.approx(1 - (0.1767 - 0.1) / 0.2, abs=1e-3)
    shifted = _summary(tmp_path / "shifted.json", [0.2, 0.15, 0.18], [0.1] * 3, [5, 6, 7])
    got = runner.invoke(app, ["compare", str(ref), str(shifted)])
    assert got.exit_code == 3 and "shifted.json" in got.output and "same seeds" in got.output
    cat = _summary(tmp_path / "cat.json", [0.2, 0.15, 0.18], [0.1] * 3, [0, 1, 2])
    cat.write_text(json.dumps({**json.loads(cat.read_text()), "target": "cat"}))
    ref.write_text(json.dumps({**json.loads(ref.read_text()), "target": "owl"}))
    got = runner.invoke(app, ["compare", str(ref), str(cat)])  # an owl effect "removed" by a cat run: refused
    assert got.exit_code == 3 and "'cat'" in got.output and "same trait" in " ".join(got.output.split())
    (tmp_path / "mlp.json").write_text(json.dumps({"same_init_acc": 0.3}))
    got = runner.invoke(app, ["compare", str(ref), str(tmp_path / "mlp.json")])
    assert got.exit_code == 3 and "mlp.json" in got.output and "p_student_per_seed" in got.output
    assert not math.isnan(share)
