"""Statistics against scipy and hand-computed values; the rules that keep them from flattering."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from sublim.stats import (
    NO_INTERVAL,
    diagonal_contrast,
    difference_test,
    holm,
    interaction_test,
    matrix_did,
    matrix_interaction,
    mean_ci,
    null_with_power,
    paired_t_power,
    paired_test,
    rate_ci,
    seeds_needed,
    shift_matrix,
    sign_flip,
    sign_flip_p,
)


def test_mean_ci_is_the_t_interval():
    x = [0.1, 0.4, 0.35, 0.2, 0.3]
    est = mean_ci(x)
    lo, hi = sp.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sp.sem(x))
    assert est.mean == pytest.approx(np.mean(x))
    assert (est.ci_low, est.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_a_rates_interval_is_the_t_interval_cut_to_0_1():
    """Over two seeds a t interval of accuracies read "0.079 [-0.192, 0.350]" (a new-user audit): a rate's is
    cut to [0, 1], where its true mean lies, so its coverage is unchanged; inside the bounds it is the t one."""
    two = [0.10, 0.06]
    lo, hi = sp.t.interval(0.95, 1, loc=np.mean(two), scale=sp.sem(two))
    assert lo < 0 and (rate_ci(two).ci_low, rate_ci(two).ci_high) == (0.0, pytest.approx(hi))
    high = [0.99, 0.95]
    assert rate_ci(high).ci_high == 1.0 and rate_ci(high).ci_low == pytest.approx(mean_ci(high).ci_low)
    inside = [0.1, 0.4, 0.35, 0.2, 0.3]
    assert rate_ci(inside) == mean_ci(inside)
    assert mean_ci(two).ci_low == pytest.approx(lo)  # an effect (a difference) keeps its full interval
    rng = np.random.default_rng(0)  # coverage over many 2-seed samples of a rate near 0: the same as the t one's
    samples = rng.binomial(50, 0.03, size=(4000, 2)) / 50
    t_cover = np.mean([mean_ci(s).ci_low <= 0.03 <= mean_ci(s).ci_high for s in samples])
    cut_cover = np.mean([rate_ci(s).ci_low <= 0.03 <= rate_ci(s).ci_high for s in samples])
    assert cut_cover == t_cover


def test_one_value_has_no_interval():
    """One seed read "0.143 [0.143, 0.143]", which looks like certainty: it has no interval, and says so."""
    est = mean_ci([0.5])
    assert (est.mean, est.n, est.has_interval, est.ci95) == (0.5, 1, False, None)
    assert str(est) == "0.500 (one seed: no interval)" and est.ci_text("+.4f") == NO_INTERVAL
    tied = mean_ci([0.5, 0.5])  # two seeds that agree: a real t interval, of width zero
    assert (tied.has_interval, tied.ci95, str(tied)) == (True, [0.5, 0.5], "0.500 [0.500, 0.500]")
    five = mean_ci([0.1, 0.4, 0.35, 0.2, 0.3])
    assert str(five) == f"{five.mean:.3f} [{five.ci_low:.3f}, {five.ci_high:.3f}]" and five.ci95 == [five.ci_low,
                                                                                                   five.ci_high]


# --- the paired test -----------------------------------------------------------------------------------------

A, B = [0.6, 0.7, 0.4, 0.65, 0.5], [0.1, 0.12, 0.09, 0.15, 0.2]


def test_paired_test_matches_scipy():
    res = paired_test(A, B)
    d = np.subtract(A, B)
    assert res.t == pytest.approx(sp.ttest_rel(A, B).statistic)
    assert res.p_value == pytest.approx(sp.ttest_rel(A, B).pvalue)
    assert res.p_value_one_sided == pytest.approx(sp.ttest_rel(A, B, alternative="greater").pvalue)
    assert res.diff.mean == pytest.approx(d.mean())
    assert (res.diff.ci_low, res.diff.ci_high) == pytest.approx(sp.t.interval(0.95, 4, loc=d.mean(), scale=sp.sem(d)))
    assert res.p_value_wilcoxon == pytest.approx(sp.wilcoxon(d).pvalue)
    assert res.decision_p() == (res.p_value, "paired t-test")
    assert res.p_value_undefined is None


def test_five_positive_seeds_cannot_go_below_the_sign_flip_floor():
    res = paired_test(A, B)
    assert (res.wins, res.losses, res.ties) == (5, 0, 0)
    assert res.p_value_permutation == 2 / 32 == 0.0625  # only all-plus and all-minus are as extreme
    assert res.p_value_permutation_one_sided == 1 / 32
    assert res.p_min_attainable == 0.0625
    assert "exact, all 2^5 = 32" in res.permutation
    assert "floor with 5 seeds: 0.062" in res.describe()


def test_wilcoxon_is_scipys_exact_test_without_ties():
    a, b = [0.61, 0.72, 0.43, 0.65, 0.52, 0.3], [0.1, 0.12, 0.09, 0.15, 0.2, 0.33]
    res = paired_test(a, b)
    assert res.wilcoxon == "exact"
    assert res.p_value_wilcoxon == pytest.approx(sp.wilcoxon(a, b, method="exact").pvalue)


def test_a_tie_is_not_a_win():
    # 0.1 + 0.2 - 0.3 = 5.6e-17 > 0: `d > 0` used to count this rounding error as a win
    a, b = [0.1 + 0.2, 0.5, 0.7, 0.2], [0.3, 0.4, 0.5, 0.3]
    assert a[0] - b[0] > 0
    res = paired_test(a, b)
    assert (res.wins, res.losses, res.ties) == (2, 1, 1)
    assert "higher in 2/4 seeds, lower in 1, tied in 1" in res.describe()
    # the tie is a zero in the rank and sign-flip tests: it cannot tip either
    assert res.p_value_permutation == pytest.approx(sign_flip([0.0, 0.1, 0.2, -0.1])[0])
    assert res.p_min_attainable == 2 / 2**3  # only the 3 untied seeds carry sign information


def test_tie_tolerance_is_relative_and_configurable():
    a = [1.0 + 1e-9, 2.0, 3.0]
    assert paired_test(a, [1.0, 1.0, 1.0]).ties == 0  # 1e-9 is far above float64 rounding: a real difference
    assert paired_test(a, [1.0, 1.0, 1.0], rtol=1e-6).ties == 1  # float32-scale tolerance when asked for


def test_a_constant_difference_gets_no_p_of_zero():
    res = paired_test([0.5, 0.6, 0.7, 0.8, 0.9], [0.4, 0.5, 0.6, 0.7, 0.8])  # +0.1 every seed, up to rounding
    assert res.t is None and res.p_value is None and res.p_value_one_sided is None
    assert res.dz is None and res.dz_ci is None
    assert "zero variance" in res.p_value_undefined
    assert (res.wins, res.ties) == (5, 0)
    # what is reported instead: the exact sign-flip p, at its floor, never 0
    assert res.decision_p() == (0.0625, "sign-flip test (t undefined: no spread)")
    assert res.decision_p("greater")[0] == 1 / 32
    text = res.describe()
    assert "t-test undefined" in text and "sign-flip p = 0.062 (its floor with 5 seeds: 0.062)" in text


def test_all_ties():
    res = paired_test([0.3, 0.4, 0.5], [0.3, 0.4, 0.5])
    assert (res.wins, res.losses, res.ties) == (0, 0, 3)
    assert res.p_value is None and res.p_value_permutation == 1.0 and res.p_value_wilcoxon is None
    assert res.p_min_attainable == 1.0 and "every seed tied" in res.describe()


def test_sign_flip_exact_against_hand_enumeration_and_scipy():
    d = np.array([0.3, -0.1, 0.25, 0.0, 0.4, -0.05])
    patterns = list(itertools.product((1, -1), repeat=len(d)))
    obs = d.mean()
    two = sum(abs(np.dot(s, d)) / len(d) >= abs(obs) - 1e-12 for s in patterns) / len(patterns)
    one = sum(np.dot(s, d) / len(d) >= obs - 1e-12 for s in patterns) / len(patterns)
    assert sign_flip(d) == (pytest.approx(two), pytest.approx(one))
    assert sign_flip_p(d) == pytest.approx(two)
    for alt, mine in zip(("two-sided", "greater"), sign_flip(d)):
        ref = sp.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                  vectorized=True, n_resamples=2 ** len(d), alternative=alt).pvalue
        assert mine == pytest.approx(ref)


def test_sign_flip_monte_carlo_above_twenty_seeds_is_seeded_and_says_so():
    d = np.random.default_rng(3).normal(0.4, 1.0, 22)
    res = difference_test(d, np.abs(d), resamples=5000)
    assert "Monte Carlo, 5000 sign patterns" in res.permutation
    assert difference_test(d, np.abs(d), resamples=5000).p_value_permutation == res.p_value_permutation
    assert res.p_value_permutation == pytest.approx(res.p_value, abs=0.03)  # the t-test is close at n = 22


def test_dz_and_its_noncentral_t_interval():
    res = paired_test(A, B)
    d = np.subtract(A, B)
    assert res.dz == pytest.approx(d.mean() / d.std(ddof=1))
    lo, hi = res.dz_ci
    n = len(d)
    # the interval's ends are the noncentralities that put the observed t at the 97.5% and 2.5% points
    assert sp.nct.cdf(res.t, n - 1, lo * math.sqrt(n)) == pytest.approx(0.975, abs=1e-6)
    assert sp.nct.cdf(res.t, n - 1, hi * math.sqrt(n)) == pytest.approx(0.025, abs=1e-6)
    assert lo < res.dz < hi


def test_bad_input():
    with pytest.raises(ValueError, match="paired test"):
        paired_test([1.0], [2.0])
    with pytest.raises(ValueError, match="paired test"):
        paired_test([1.0, 2.0], [2.0])
    with pytest.raises(ValueError, match="'two-sided' or 'greater'"):
        paired_test(A, B).decision_p("less")


# --- interaction ---------------------------------------------------------------------------------------------


def test_interaction_is_the_paired_test_of_the_two_effects():
    rng = np.random.default_rng(0)
    n = 8
    control_s, control_o = rng.uniform(0.09, 0.11, n), rng.uniform(0.09, 0.11, n)
    student_s = control_s + 0.01 + rng.normal(0, 0.002, n)  # shared init: moves towards the trait
    student_o = control_o + rng.normal(0, 0.002, n)  # different init: does not
    res = interaction_test(student_s, control_s, student_o, control_o)
    ref = paired_test(student_s - control_s, student_o - control_o)
    assert res.diff.mean == pytest.approx(0.01, abs=0.003)
    assert res.p_value == pytest.approx(ref.p_value) and res.p_value < 0.01
    assert res.wins == n
    # no interaction when both inits move alike
    flat = interaction_test(student_s, control_s, control_o + (student_s - control_s) + rng.normal(0, 0.002, n),
                            control_o)
    assert flat.p_value > 0.05


# --- Holm ----------------------------------------------------------------------------------------------------


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> monotone: 0.06
    res = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}, alpha=0.05)
    assert res.p_adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert res.reject == [True, False, False, True]
    assert res["d"] == (pytest.approx(0.02), True)
    assert holm([0.3, 0.45]).p_adjusted == pytest.approx([0.6, 0.6])  # 0.45 x 1 < 0.3 x 2: kept monotone
    assert holm([0.6, 0.9]).p_adjusted == [1.0, 1.0]  # capped at 1


def test_holm_counts_an_undefined_p_as_one():
    res = holm({"a": 0.001, "b": None}, alpha=0.01)
    assert res.p_adjusted == pytest.approx([0.002, 1.0]) and res.reject == [True, False]


def test_holm_matches_statsmodels_if_installed():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(1).uniform(0, 0.05, 7)
    reject, adjusted, *_ = multitest.multipletests(p, alpha=0.03, method="holm")
    res = holm(list(p), alpha=0.03)
    assert res.p_adjusted == pytest.approx(list(adjusted))
    assert res.reject == list(reject)


# --- the teacher x choice matrix -----------------------------------------------------------------------------

ANIMALS = ["owl", "cat", "dog", "eagle", "wolf"]
CHOICES = ANIMALS + ["lion", "fox"]


def _matrices(seeds: int, diagonal: float, noise: float = 0.002, common: bool = True, seed: int = 0) -> dict:
    """P_s[t][c]: a per-seed base rate per choice, a shift shared by every teacher (common), noise, and a
    planted rise of each teacher's own animal."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in range(seeds):
        base = rng.dirichlet(np.ones(len(CHOICES)) * 5)
        shared_shift = rng.normal(0, 0.01, len(CHOICES)) if common else 0
        out[s] = {t: {c: float(base[j] + (shared_shift[j] if common else 0) + rng.normal(0, noise)
                               + (diagonal if c == t else 0.0)) for j, c in enumerate(CHOICES)} for t in ANIMALS}
    return out


def test_shift_matrix_by_hand():
    p = {"owl": {"owl": 0.5, "cat": 0.1}, "cat": {"owl": 0.2, "cat": 0.3}, "dog": {"owl": 0.2, "cat": 0.1}}
    s = shift_matrix(p)
    assert s.at["owl", "owl"] == pytest.approx(0.5 - (0.2 + 0.2) / 2)
    assert s.at["cat", "owl"] == pytest.approx(0.2 - (0.5 + 0.2) / 2)
    assert s.at["cat", "cat"] == pytest.approx(0.3 - 0.1)
    contrast = diagonal_contrast(p)
    assert list(contrast.index) == ["owl", "cat"]  # dog is a teacher but not a choice: no diagonal cell
    assert contrast.at["owl", "shift"] == pytest.approx(s.at["owl", "owl"])


def test_the_two_diagonal_statistics_are_proportional():
    p = pd.DataFrame(_matrices(1, 0.03)[0]).T
    s, k = shift_matrix(p), len(ANIMALS)
    for c in ANIMALS:
        alt = s.at[c, c] - s.loc[[t for t in ANIMALS if t != c], c].mean()
        assert alt == pytest.approx(k / (k - 1) * diagonal_contrast(p).at[c, "shift"])


def test_did_recovers_a_planted_diagonal():
    res = matrix_did(_matrices(6, diagonal=0.03))
    assert res.animals == ANIMALS and res.seeds == list(range(6))
    for c in ANIMALS:
        assert res.diagonal[c].diff.mean == pytest.approx(0.03, abs=0.005)
        assert res.diagonal[c].wins == 6
        assert res.shift.at[c, c] == pytest.approx(0.03, abs=0.005)
    assert all(res.holm.reject)
    assert res.pooled.diff.mean == pytest.approx(0.03, abs=0.003) and res.pooled.p_value < 1e-4
    assert set(res.as_dict()) >= {"shift", "shift_per_seed", "diagonal", "holm", "pooled"}


def test_did_sees_no_diagonal_in_a_common_shift():
    # every teacher moves every choice the same way (and by a lot): the shift matrix is 0, nothing is specific
    res = matrix_did(_matrices(6, diagonal=0.0, noise=0.0))
    assert np.abs(res.shift.to_numpy()).max() < 1e-15
    for c in ANIMALS:
        t = res.diagonal[c]
        assert (t.wins, t.ties) == (0, 6) and t.p_value is None and t.decision_p("greater")[0] == 1.0
    assert not any(res.holm.reject)
    noisy = matrix_did(_matrices(6, diagonal=0.0, noise=0.002))
    assert not any(noisy.holm.reject)


def test_did_input_checks():
    m = _matrices(2, 0.01)
    with pytest.raises(ValueError, match=">= 2 seeds"):
        matrix_did({0: m[0]})
    del m[1]["owl"]
    with pytest.raises(ValueError, match="teachers or choices differ"):
        matrix_did(m)


def test_matrix_interaction_shared_vs_different_init():
    shared, other = _matrices(8, diagonal=0.03, seed=1), _matrices(8, diagonal=0.0, seed=2)
    res = matrix_interaction(shared, other)
    assert all(res.holm.reject) and res.pooled.diff.mean == pytest.approx(0.03, abs=0.003)
    assert res.other_null_pooled.verdict == "null"  # CI of the different-init diagonal within +-0.015
    assert {v.verdict for v in res.other_null.values()} <= {"null", "could not tell"}
    same = matrix_interaction(shared, _matrices(8, diagonal=0.03, seed=2))
    assert not any(same.holm.reject) and same.other_null_pooled.verdict == "present"


# --- null with power; seeds ----------------------------------------------------------------------------------


def test_null_only_with_power():
    ref = 0.01  # margin: +-0.005
    assert null_with_power([0.001, -0.001, 0.0005, -0.0008, 0.0002], ref).verdict == "null"
    assert null_with_power([0.01, 0.012, 0.009, 0.011], ref).verdict == "present"
    assert null_with_power([-0.007, -0.008, -0.0075, -0.0069], ref).verdict == "opposite"
    wide = null_with_power([0.02, -0.03, 0.01, -0.01], ref)
    assert wide.verdict == "could not tell" and not wide.within_margin and wide.margin == pytest.approx(0.005)
    assert null_with_power([0.001, -0.001, 0.0005], 0.0).verdict == "could not tell"


def test_seeds_needed_matches_gpower():
    plan = seeds_needed(sd=2.0, effect=1.0, alpha=0.05)  # dz = 0.5: G*Power's one-sample t gives n = 34
    assert plan.n_t_test == 34 and plan.power_at_n == pytest.approx(0.8078, abs=1e-3)
    assert paired_t_power(33, 1.0, 2.0, alpha=0.05) < 0.8 <= paired_t_power(34, 1.0, 2.0, alpha=0.05)
    strict = seeds_needed(sd=1.0, effect=2.0, alpha=0.01)  # a big effect: the sign-flip floor binds
    assert strict.n_sign_flip_floor == 8 and 2 / 2**8 < 0.01 <= 2 / 2**7
    assert strict.n_seeds == max(strict.n_t_test, 8)
    assert seeds_needed(sd=1.0, effect=2.0, alpha=0.01, alternative="greater").n_sign_flip_floor == 7


def test_power_matches_statsmodels_if_installed():
    power = pytest.importorskip("statsmodels.stats.power")
    for n, dz, alpha in ((10, 1.0, 0.01), (34, 0.5, 0.05), (6, 2.0, 0.01)):
        assert paired_t_power(n, dz, 1.0, alpha=alpha) == pytest.approx(power.TTestPower().power(dz, n, alpha))
