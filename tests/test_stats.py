"""Statistics against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from sublim.stats import mean_ci, paired_test, sign_flip_p


def test_mean_ci_is_the_t_interval():
    x = [0.1, 0.4, 0.35, 0.2, 0.3]
    est = mean_ci(x)
    lo, hi = sp.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sp.sem(x))
    assert est.mean == pytest.approx(np.mean(x))
    assert (est.ci_low, est.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_mean_ci_single_value_is_degenerate():
    est = mean_ci([0.5])
    assert (est.mean, est.ci_low, est.ci_high, est.n) == (0.5, 0.5, 0.5, 1)


def test_paired_test_matches_scipy_and_counts_wins():
    a, b = [0.6, 0.7, 0.4, 0.65, 0.5], [0.1, 0.12, 0.09, 0.15, 0.2]
    res = paired_test(a, b)
    assert res.p_value == pytest.approx(sp.ttest_rel(a, b).pvalue)
    assert res.p_value_one_sided == pytest.approx(sp.ttest_rel(a, b, alternative="greater").pvalue)
    assert res.wins == 5
    assert res.diff.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert res.p_value_permutation == pytest.approx(2 / 32)  # all positive: only +all and -all are as extreme


def test_sign_flip_exact_on_mixed_signs():
    d = np.array([1.0, -1.0, 2.0])
    # |mean| >= 2/3 happens for sign patterns with |s1 - s2 + 2 s3| >= 2: enumerate by hand
    expected = sum(abs(s1 * 1 - s2 * 1 + s3 * 2) / 3 >= 2 / 3 - 1e-12
                   for s1 in (1, -1) for s2 in (1, -1) for s3 in (1, -1)) / 8
    assert sign_flip_p(d) == pytest.approx(expected)


def test_paired_test_constant_difference_and_bad_input():
    res = paired_test([0.5, 0.6], [0.4, 0.5])
    assert math.isinf(res.t) and res.p_value == 0.0
    with pytest.raises(ValueError, match="paired test"):
        paired_test([1.0], [2.0])
