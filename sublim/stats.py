"""Statistics over seeds: t confidence intervals and paired tests (each seed has its own teacher)."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci_low: float
    ci_high: float
    n: int
    values: list[float]

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def mean_ci(values: list[float], level: float = 0.95) -> Estimate:
    """Mean with a Student-t interval over seeds; a single value gets a degenerate interval."""
    from scipy import stats  # lazily: 1 s of import for every DVC stage process otherwise

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2 or float(x.std(ddof=1)) == 0.0:
        return Estimate(mean, mean, mean, len(x), [float(v) for v in x])
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Estimate(mean, mean - half, mean + half, len(x), [float(v) for v in x])


@dataclass(frozen=True)
class PairedTest:
    """a - b over seeds: the effect with its CI, a paired t-test and an exact sign-flip permutation test."""

    diff: Estimate
    t: float
    p_value: float  # two-sided paired t-test
    p_value_one_sided: float  # H1: a > b
    p_value_permutation: float  # exact two-sided sign-flip test over all 2^n relabelings
    wins: int  # seeds where a > b

    def as_dict(self) -> dict:
        return {**asdict(self), "diff": self.diff.as_dict()}


def paired_test(a: list[float], b: list[float]) -> PairedTest:
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired test needs two equal-length lists of >= 2 seeds, got {len(a)} and {len(b)}")
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    d = x - y
    if np.allclose(d, d[0]):  # no spread: t is undefined; the sign test below still speaks
        t, p, p1 = (math.inf if d[0] > 0 else -math.inf if d[0] < 0 else 0.0), float(d[0] == 0), float(d[0] <= 0)
    else:
        res = stats.ttest_rel(x, y)
        t, p = float(res.statistic), float(res.pvalue)
        p1 = float(stats.ttest_rel(x, y, alternative="greater").pvalue)
    return PairedTest(mean_ci(list(d)), t, p, p1, sign_flip_p(d), int((d > 0).sum()))


def sign_flip_p(d: np.ndarray) -> float:
    """Exact permutation p: the share of the 2^n sign assignments whose |mean| is at least the observed."""
    observed = abs(d.mean())
    flips = np.array(list(itertools.product((1, -1), repeat=len(d))))
    return float((np.abs((flips * d).mean(axis=1)) >= observed - 1e-12).mean())
