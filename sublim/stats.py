"""Statistics over seeds that cannot flatter (issue 13).

Each seed is one replicate with its own teacher, so every test here is over seeds: one number per seed, paired
where two numbers come from the same seed. The rules, applied everywhere:

- A tie is not a win. Seed i is a tie when |a_i - b_i| <= rtol * max(|a_i|, |b_i|), rtol = 1e-12 by default:
  the same number reached by two orders of float64 operations differs by ~1e-16 relative, so 1e-12 absorbs
  rounding with room to spare and is far below any effect we measure (~1e-3). Pass a larger rtol for values
  computed in float32 (~1e-6). Wins, losses and ties are counted separately; ties count as zero differences in
  the sign-flip and Wilcoxon tests (Wilcoxon drops them, as Wilcoxon did).
- A zero-variance difference gets no p = 0. When all per-seed differences are equal (spread within the tie
  tolerance) the t statistic is 0/0 or c/0: its p-values, the standardised effect and its CI are None and
  `p_value_undefined` says why. The exact sign-flip test still speaks, and it cannot go below its floor
  2 / 2^n (0.0625 at 5 seeds), which is reported beside it (`p_min_attainable`).
- Every test is computed by scipy (t, noncentral t, Wilcoxon, permutation); nothing here is a hand-rolled
  distribution.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

RTOL = 1e-12  # relative tie tolerance, see the module docstring
EXACT_MAX_N = 20  # sign-flip: all 2^n patterns up to here, seeded Monte Carlo above
RESAMPLES = 100_000  # Monte Carlo sign patterns when n > EXACT_MAX_N
SEED = 0  # the Monte Carlo seed: the same data always gives the same p
NO_INTERVAL = "(one seed: no interval)"


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci_low: float  # equal to the mean where there is no interval (one value): see `has_interval`
    ci_high: float
    n: int  # values behind it; 0 where only the interval is known (read back from a report)
    values: list[float]

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def has_interval(self) -> bool:
        """One seed has no spread to build an interval from: its mean is shown alone, never as [m, m], which
        reads as certainty."""
        return self.n != 1

    @property
    def ci95(self) -> list[float] | None:
        """The interval as reports store it: None without one."""
        return [self.ci_low, self.ci_high] if self.has_interval else None

    def ci_text(self, spec: str = ".3f") -> str:
        return f"[{self.ci_low:{spec}}, {self.ci_high:{spec}}]" if self.has_interval else NO_INTERVAL

    def __str__(self) -> str:
        return f"{self.mean:.3f} {self.ci_text()}"


def mean_ci(values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean with a Student-t interval over seeds; no spread gets a degenerate interval, one value none.
    `bounds`: the range the quantity lives in; the interval is cut to it, which keeps its coverage exactly (the
    true mean is always inside the bounds), instead of reading, over two seeds, "accuracy -0.19 to 0.35"."""
    from scipy import stats  # lazily: 1 s of import for every DVC stage process otherwise

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2 or float(x.std(ddof=1)) == 0.0:
        return Estimate(mean, mean, mean, len(x), [float(v) for v in x])
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(mean, low, high, len(x), [float(v) for v in x])


def rate_ci(values: Sequence[float], level: float = 0.95) -> Estimate:
    """`mean_ci` of a rate, probability or accuracy over seeds: its interval within [0, 1]."""
    return mean_ci(values, level, bounds=(0.0, 1.0))


@dataclass(frozen=True)
class Ratio:
    """mean(b) / mean(a) over paired seeds with Fieller's interval; a bound is None where the interval is
    unbounded (mean(a) itself is not distinguishable from 0 at this level: no share of it can be pinned down)."""

    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    bounded: bool
    level: float = 0.95


def fieller_ratio(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Ratio:
    """Fieller's interval for mean(b) / mean(a), a and b paired by seed (their covariance is used): the R with
    (mean(b) - R mean(a))^2 <= t^2 var(mean(b) - R mean(a)). Exact under normality, unlike a delta method."""
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"a ratio over seeds needs two equal-length lists of >= 2 seeds, got {len(a)} and {len(b)}")
    n = len(x)
    ma, mb = float(x.mean()), float(y.mean())
    cov = np.cov(np.stack([x, y]), ddof=1) / n
    saa, sbb, sab = float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])
    t2 = float(stats.t.ppf((1 + level) / 2, n - 1)) ** 2
    ratio = mb / ma if ma != 0 else None
    qa, qb, qc = ma * ma - t2 * saa, ma * mb - t2 * sab, mb * mb - t2 * sbb
    disc = qb * qb - qa * qc
    if qa <= 0 or disc < 0:  # mean(a)'s own CI contains 0: the set of R is unbounded
        return Ratio(ratio, None, None, n, False, level)
    root = math.sqrt(disc)
    return Ratio(ratio, (qb - root) / qa, (qb + root) / qa, n, True, level)


# --- the paired test ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """d = a - b per seed (H1 one-sided: a > b). t-based fields are None when the t statistic is undefined."""

    diff: Estimate  # mean of d with its t CI (degenerate when d has no spread)
    n: int
    wins: int  # seeds with d > tolerance
    losses: int  # seeds with d < -tolerance
    ties: int  # seeds with |d| <= tolerance: neither a win nor a loss
    tie_rtol: float
    t: float | None
    p_value: float | None  # paired t-test, two-sided
    p_value_one_sided: float | None  # paired t-test, H1: a > b
    p_value_undefined: str | None  # why the t-based values are None; None when they are defined
    p_value_permutation: float  # sign-flip test of the mean, two-sided
    p_value_permutation_one_sided: float  # sign-flip, H1: a > b
    permutation: str  # "exact, all 2^n sign patterns" or the Monte Carlo count and seed
    p_min_attainable: float  # the two-sided sign-flip (and exact Wilcoxon) floor: 2 / 2^(non-tied seeds)
    p_value_wilcoxon: float | None  # signed-rank, two-sided; None when every seed is a tie
    wilcoxon: str  # which Wilcoxon p: "exact", a permutation over sign patterns (ties), or "asymptotic"
    dz: float | None  # standardised effect: mean(d) / sd(d)
    dz_ci: tuple[float, float] | None  # by inverting the noncentral t (Steiger & Fouladi)
    level: float = 0.95

    def as_dict(self) -> dict:
        return {**asdict(self), "diff": self.diff.as_dict()}

    def decision_p(self, alternative: str = "two-sided") -> tuple[float, str]:
        """The p a verdict uses: the paired t-test's, or the exact sign-flip p when t is undefined (no spread)."""
        if alternative not in ("two-sided", "greater"):
            raise ValueError(f"alternative must be 'two-sided' or 'greater' (swap a and b for 'less'): {alternative!r}")
        t_p = self.p_value if alternative == "two-sided" else self.p_value_one_sided
        if t_p is not None:
            return t_p, "paired t-test"
        return (self.p_value_permutation if alternative == "two-sided" else self.p_value_permutation_one_sided,
                "sign-flip test (t undefined: no spread)")

    def describe(self, alternative: str = "two-sided") -> str:
        """Wins/ties/losses and the p-values in words, with the sign-flip floor when few seeds bound it."""
        self.decision_p(alternative)  # validates `alternative`
        two = alternative == "two-sided"
        parts = [f"higher in {self.wins}/{self.n} seeds, lower in {self.losses}, tied in {self.ties}"]
        if self.p_value_undefined is None:
            first, second = (self.p_value, self.p_value_one_sided) if two else (self.p_value_one_sided, self.p_value)
            parts.append(f"paired t-test {'' if two else 'one-sided '}p = {fmt_p(first)} "
                         f"({'one' if two else 'two'}-sided {fmt_p(second)})")
        else:
            parts.append("t-test undefined (every seed's difference is the same)")
        floor = self.p_min_attainable if two else self.p_min_attainable / 2
        flip = self.p_value_permutation if two else self.p_value_permutation_one_sided
        seeds = f"{self.n} seeds" if not self.ties else f"{self.n - self.ties} untied seeds"
        if self.ties == self.n:
            return "; ".join([*parts, "every seed tied: no sign information, sign-flip p = 1"])
        kind = "exact sign-flip" if "exact" in self.permutation else "sign-flip (Monte Carlo)"
        parts.append(f"{kind}{'' if two else ' one-sided'} p = {fmt_p(flip)}"
                     + (f" (its floor with {seeds}: {fmt_p(floor)})" if floor >= 1e-3 else ""))
        if self.dz is not None and self.dz_ci is not None:
            parts.append(f"dz = {self.dz:.2f} [{self.dz_ci[0]:.2f}, {self.dz_ci[1]:.2f}]")
        return "; ".join(parts)


def fmt_p(p: float | None) -> str:
    return "undefined" if p is None else f"{p:.2g}"


def paired_test(a: Sequence[float], b: Sequence[float], *, rtol: float = RTOL, level: float = 0.95,
                resamples: int = RESAMPLES, seed: int = SEED) -> PairedTest:
    """a - b over seeds (same seed = same teacher): effect, CI, dz, paired t, sign-flip and Wilcoxon tests."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"a paired test needs two equal-length lists of >= 2 seeds, got {len(a)} and {len(b)}")
    return difference_test(x - y, np.maximum(np.abs(x), np.abs(y)), rtol=rtol, level=level, resamples=resamples,
                           seed=seed)


def interaction_test(shared_a: Sequence[float], shared_b: Sequence[float], other_a: Sequence[float],
                     other_b: Sequence[float], **kw) -> PairedTest:
    """(shared_a - shared_b) - (other_a - other_b) per seed: does the effect in shared-init students exceed the
    effect in different-init students of the same seed? Paired by seed; ties scaled by all four inputs."""
    arrays = [np.asarray(v, float) for v in (shared_a, shared_b, other_a, other_b)]
    if len({v.shape for v in arrays}) != 1 or arrays[0].ndim != 1 or len(arrays[0]) < 2:
        raise ValueError("an interaction test needs four equal-length lists of >= 2 seeds")
    sa, sb, oa, ob = arrays
    return difference_test((sa - sb) - (oa - ob), np.max(np.abs(np.stack(arrays)), axis=0), **kw)


def difference_test(d: Sequence[float], scale: Sequence[float] | float, *, rtol: float = RTOL, level: float = 0.95,
                    resamples: int = RESAMPLES, seed: int = SEED) -> PairedTest:
    """The tests on per-seed differences d; `scale` (per seed) is the magnitude d was computed from, for ties."""
    from scipy import stats

    d = np.asarray(d, float)
    n = len(d)
    if n < 2:
        raise ValueError(f"a test over seeds needs >= 2 seeds, got {n}")
    tol = rtol * np.broadcast_to(np.asarray(scale, float), d.shape)
    tie = np.abs(d) <= tol
    d0 = np.where(tie, 0.0, d)  # ties are exact zeros for the rank and sign-flip tests
    wins, losses, ties = int((d0 > 0).sum()), int((d0 < 0).sum()), int(tie.sum())
    diff = mean_ci(d, level)

    t = p2 = p1 = dz = None
    dz_ci = None
    undefined = None
    if np.ptp(d) <= rtol * float(np.max(np.abs(scale))):
        undefined = (f"all {n} differences are equal ({float(d.mean()):+.4g}): zero variance, so the t statistic, "
                     "its p and dz are undefined; only the sign-flip test speaks")
    else:
        res = stats.ttest_1samp(d, 0.0)
        t, p2 = float(res.statistic), float(res.pvalue)
        p1 = float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)
        dz = float(d.mean() / d.std(ddof=1))
        dz_ci = _dz_ci(t, n, level)

    nonzero = n - ties
    exact = n <= EXACT_MAX_N
    perm2, perm1 = sign_flip(d0, resamples=resamples, seed=seed)
    permutation = (f"exact, all 2^{n} = {2**n} sign patterns" if exact else
                   f"Monte Carlo, {resamples} sign patterns (numpy seed {seed}), p = (k + 1) / (N + 1)")
    floor = min(1.0, 2.0 / 2**nonzero) if exact else min(1.0, max(2.0 / 2**nonzero, 2.0 / (resamples + 1)))

    p_wil, wil = None, "undefined: every seed is a tie"
    if nonzero:
        tied_ranks = len(np.unique(np.abs(d0[d0 != 0]))) < nonzero
        if not tied_ranks and not ties and n <= 50:
            method, wil = "exact", "exact"
        elif n <= 13:  # scipy's own rule: 2^13 sign patterns are few enough to enumerate
            method = stats.PermutationMethod(n_resamples=9999, rng=np.random.default_rng(seed))
            wil = "exact over all 2^n sign patterns (zeros or tied ranks rule out the tabled exact test)"
        else:
            method, wil = "asymptotic", "asymptotic normal (zeros or tied ranks, n > 13)"
        p_wil = float(stats.wilcoxon(d0, zero_method="wilcox", method=method).pvalue)
    return PairedTest(diff, n, wins, losses, ties, rtol, t, p2, p1, undefined, perm2, perm1, permutation, floor,
                      p_wil, wil, dz, dz_ci, level)


def _dz_ci(t: float, n: int, level: float) -> tuple[float, float] | None:
    """CI of dz from the noncentral t: the noncentralities that put the observed t at the interval's tails."""
    from scipy import optimize, stats

    df, tail = n - 1, (1 - level) / 2

    def cdf(nc: float) -> float:  # P(T <= t | nc), decreasing in nc; boost's cdf can give NaN far in a tail
        v = float(stats.nct.cdf(t, df, nc))
        return v if v == v else 1.0 - float(stats.nct.sf(t, df, nc))

    def solve(target: float, side: int) -> float | None:
        width = 3.0 * math.sqrt(1.0 + t * t / (2 * df)) + 1.0  # about the interval's half-width, then doubled
        for _ in range(10):
            edge = t + side * width
            lo, hi = (edge, t) if side < 0 else (t, edge)
            f_lo, f_hi = cdf(lo) - target, cdf(hi) - target
            if f_lo == f_lo and f_hi == f_hi and f_lo >= 0 >= f_hi:
                return float(optimize.brentq(lambda nc: cdf(nc) - target, lo, hi, xtol=1e-10))
            width *= 2
        return None

    lo, hi = solve(1 - tail, -1), solve(tail, +1)
    if lo is None or hi is None:
        return None
    return lo / math.sqrt(n), hi / math.sqrt(n)


def sign_flip(d: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Sign-flip permutation p of the mean of d: (two-sided, H1 mean > 0).

    Under H0 (no effect) each seed's difference is as likely to be +d_i as -d_i. For n <= EXACT_MAX_N every one
    of the 2^n sign patterns is enumerated (subset sums by doubling: 2^20 floats, 8 MiB), so p is exact and at
    least 2/2^n two-sided; scipy's permutation_test gives the same p but takes a minute at n = 20 (the tests
    check the two agree). Above that, scipy's seeded Monte Carlo with p = (k + 1) / (N + 1). A pattern counts as
    extreme when its |sum| >= the observed - 1e-12 x sum|d|: rounding can only make p larger, never smaller."""
    d = np.asarray(d, float)
    if not np.any(d):
        return 1.0, 1.0
    if len(d) <= EXACT_MAX_N:
        sums = np.zeros(1)
        for v in d:
            sums = np.concatenate((sums + v, sums - v))
        observed, gamma = float(d.sum()), 1e-12 * float(np.abs(d).sum())
        return (float(np.mean(np.abs(sums) >= abs(observed) - gamma)), float(np.mean(sums >= observed - gamma)))
    from scipy import stats

    kw = dict(permutation_type="samples", vectorized=True, n_resamples=resamples, batch=10_000)
    stat = lambda x, axis: np.mean(x, axis=axis)  # noqa: E731
    two, one = (float(stats.permutation_test((d,), stat, alternative=alt, rng=np.random.default_rng(seed), **kw).pvalue)
                for alt in ("two-sided", "greater"))
    return two, one


def sign_flip_p(d: Sequence[float]) -> float:
    """The two-sided sign-flip p of the mean of d (the old API's name)."""
    return sign_flip(d)[0]


# --- families of tests ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holm:
    """Holm's step-down correction: family-wise error <= alpha with no assumption on how the tests depend."""

    names: list[str]
    p: list[float | None]
    p_adjusted: list[float]
    reject: list[bool]  # adjusted p < alpha
    alpha: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, name: str) -> tuple[float, bool]:
        i = self.names.index(name)
        return self.p_adjusted[i], self.reject[i]


def holm(p: Mapping[str, float | None] | Sequence[float | None], alpha: float = 0.01) -> Holm:
    """Adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)) over the sorted p, so they are monotone; reject
    when adjusted p < alpha (strict, like every verdict here). An undefined p counts as 1: it stays in the
    family (dropping it would shrink m and flatter the others) and is never rejected."""
    names = [str(k) for k in p] if isinstance(p, Mapping) else [str(i) for i in range(len(p))]
    raw = list(p.values()) if isinstance(p, Mapping) else list(p)
    x = np.array([1.0 if v is None else float(v) for v in raw])
    m = len(x)
    order = np.argsort(x, kind="stable")
    steps = np.minimum(1.0, (m - np.arange(m)) * x[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(steps)
    return Holm(names, raw, [float(v) for v in adjusted], [bool(v < alpha) for v in adjusted], alpha)


# --- the teacher x evaluated-choice matrix (issue 13, item 1) ---------------------------------------------------

Matrix = Mapping[str, Mapping[str, float]]  # P[teacher][choice]: mean P(choice) in that teacher's students


def as_matrix(p: Matrix | pd.DataFrame) -> pd.DataFrame:
    """Rows = teachers, columns = evaluated choices; every cell must be present. Pass the animal teachers only:
    a control teacher's row would join every column's comparison pool, which the DiD does not need."""
    frame = p.copy() if isinstance(p, pd.DataFrame) else pd.DataFrame.from_dict(p, orient="index")
    frame = frame.astype(float)
    if frame.isna().any().any():
        raise ValueError("the teacher x choice matrix has missing cells")
    if len(frame.index) < 2:
        raise ValueError("a difference in differences needs >= 2 teachers")
    return frame


def shift_matrix(p: Matrix | pd.DataFrame) -> pd.DataFrame:
    """S[t][c] = P[t][c] - mean over the other teachers t' != t of P[t'][c].

    Each column is compared with itself in the other teachers' students, so any shift common to all teachers'
    students (every owl-, cat-, dog-teacher's numbers raising P(owl) alike) cancels: no neutral control needed."""
    frame = as_matrix(p)
    k = len(frame.index)
    return frame - (frame.sum(axis=0) - frame) / (k - 1)


def diagonal_contrast(p: Matrix | pd.DataFrame) -> pd.DataFrame:
    """Per animal c (a teacher that is also a choice): P[c][c], the mean of P[t][c] over the other teachers,
    and their difference, which is the diagonal shift S[c][c]."""
    frame = as_matrix(p)
    animals = [t for t in frame.index if t in frame.columns]
    if not animals:
        raise ValueError("no teacher is also an evaluated choice: the matrix has no diagonal")
    k = len(frame.index)
    diag = pd.Series({c: float(frame.at[c, c]) for c in animals})
    off = pd.Series({c: float((frame[c].sum() - frame.at[c, c]) / (k - 1)) for c in animals})
    return pd.DataFrame({"diagonal": diag, "off_diagonal": off, "shift": diag - off})


@dataclass(frozen=True)
class MatrixDiD:
    """The difference in differences of a teacher x choice matrix, per seed and pooled over seeds.

    The per-animal statistic is d_s(c) = P_s[c][c] - mean_{t != c} P_s[t][c] = S_s[c][c]: does the students'
    probability of c rise more under c's own teacher than under the others? The alternative form
    S_s[c][c] - mean_{t != c} S_s[t][c] equals k/(k-1) times it (each column of S sums to 0), so both give the
    same t, p and wins; the first is in probability units and reads directly. Seeds are the independent units:
    animals of one seed share bases, so the pooled test averages the animals within a seed first."""

    seeds: list
    teachers: list[str]
    choices: list[str]
    animals: list[str]
    shift_per_seed: dict  # seed -> DataFrame S_s
    shift: pd.DataFrame  # mean over seeds of S_s (the heat map)
    contrast_per_seed: dict  # seed -> DataFrame(diagonal, off_diagonal, shift) per animal
    diagonal: dict[str, PairedTest]  # per animal, over seeds: diagonal vs its off-diagonal mean
    holm: Holm  # over the animals, on decision_p(alternative)
    pooled: PairedTest  # per seed, the animals' mean diagonal vs their mean off-diagonal
    alternative: str

    def as_dict(self) -> dict:
        return {"seeds": self.seeds, "teachers": self.teachers, "choices": self.choices, "animals": self.animals,
                "alternative": self.alternative, "shift": _nested(self.shift),
                "shift_per_seed": {str(s): _nested(f) for s, f in self.shift_per_seed.items()},
                "diagonal": {c: t.as_dict() for c, t in self.diagonal.items()}, "holm": self.holm.as_dict(),
                "pooled": self.pooled.as_dict()}


def _nested(frame: pd.DataFrame) -> dict:
    return {str(r): {str(c): float(frame.at[r, c]) for c in frame.columns} for r in frame.index}


def _per_seed_frames(per_seed: Mapping[Hashable, Matrix | pd.DataFrame]) -> dict:
    frames = {s: as_matrix(per_seed[s]) for s in sorted(per_seed)}
    if len(frames) < 2:
        raise ValueError(f"a test over seeds needs >= 2 seeds, got {len(frames)}")
    first = next(iter(frames.values()))
    for s, f in frames.items():
        if set(f.index) != set(first.index) or set(f.columns) != set(first.columns):
            raise ValueError(f"seed {s}: teachers or choices differ from the first seed's")
    return {s: f.loc[first.index, first.columns] for s, f in frames.items()}


def matrix_did(per_seed: Mapping[Hashable, Matrix | pd.DataFrame], *, alpha: float = 0.01,
               alternative: str = "greater", **kw) -> MatrixDiD:
    """Per seed P[teacher][choice] -> shift matrices, the per-animal diagonal test (Holm over animals) and the
    pooled one. `alternative="greater"` by default: the hypothesis (own teacher raises its own animal) is
    directional and fixed before the data; a diagonal that falls is no evidence of transfer."""
    frames = _per_seed_frames(per_seed)
    seeds = list(frames)
    first = frames[seeds[0]]
    contrast = {s: diagonal_contrast(f) for s, f in frames.items()}
    animals = list(contrast[seeds[0]].index)
    shifts = {s: shift_matrix(f) for s, f in frames.items()}
    tests = {c: paired_test([contrast[s].at[c, "diagonal"] for s in seeds],
                            [contrast[s].at[c, "off_diagonal"] for s in seeds], **kw) for c in animals}
    pooled = paired_test([contrast[s]["diagonal"].mean() for s in seeds],
                         [contrast[s]["off_diagonal"].mean() for s in seeds], **kw)
    family = holm({c: t.decision_p(alternative)[0] for c, t in tests.items()}, alpha)
    return MatrixDiD(seeds, [str(t) for t in first.index], [str(c) for c in first.columns], animals, shifts,
                     sum(shifts.values()) / len(shifts), contrast, tests, family, pooled, alternative)


@dataclass(frozen=True)
class MatrixInteraction:
    """Shared-init minus different-init diagonal contrast, per animal and pooled, paired by seed; and whether
    the different-init diagonal is null in the sense of `null_with_power` (CI within half the shared effect)."""

    per_animal: dict[str, PairedTest]
    holm: Holm
    pooled: PairedTest
    other_null: dict[str, NullVerdict] = field(default_factory=dict)
    other_null_pooled: NullVerdict | None = None
    alternative: str = "greater"

    def as_dict(self) -> dict:
        return {"per_animal": {c: t.as_dict() for c, t in self.per_animal.items()}, "holm": self.holm.as_dict(),
                "pooled": self.pooled.as_dict(), "alternative": self.alternative,
                "other_null": {c: v.as_dict() for c, v in self.other_null.items()},
                "other_null_pooled": None if self.other_null_pooled is None else self.other_null_pooled.as_dict()}


def matrix_interaction(shared: Mapping[Hashable, Matrix | pd.DataFrame],
                       other: Mapping[Hashable, Matrix | pd.DataFrame], *, alpha: float = 0.01,
                       alternative: str = "greater", **kw) -> MatrixInteraction:
    """The interaction per animal: d_s(c) in shared-init students minus d_s(c) in different-init students of
    the same seed (both teachers' data identical), with Holm over the animals and a pooled test."""
    sh, ot = _per_seed_frames(shared), _per_seed_frames(other)
    if list(sh) != list(ot):
        raise ValueError(f"shared and other matrices must cover the same seeds: {list(sh)} vs {list(ot)}")
    seeds = list(sh)
    cs, co = ({s: diagonal_contrast(f) for s, f in m.items()} for m in (sh, ot))
    animals = [c for c in cs[seeds[0]].index if c in co[seeds[0]].index]

    def cols(contrast: dict, c: str | None, col: str) -> list[float]:
        return [float(contrast[s][col].mean() if c is None else contrast[s].at[c, col]) for s in seeds]

    def inter(c: str | None) -> PairedTest:
        return interaction_test(cols(cs, c, "diagonal"), cols(cs, c, "off_diagonal"),
                                cols(co, c, "diagonal"), cols(co, c, "off_diagonal"), **kw)

    per = {c: inter(c) for c in animals}
    family = holm({c: t.decision_p(alternative)[0] for c, t in per.items()}, alpha)

    def null(c: str | None) -> NullVerdict:
        ref = float(np.mean(cols(cs, c, "shift")))
        return null_with_power(cols(co, c, "shift"), reference=ref)

    return MatrixInteraction(per, family, inter(None), {c: null(c) for c in animals}, null(None), alternative)


# --- a null that counts only with power (issue 13, item 4) -------------------------------------------------------


@dataclass(frozen=True)
class NullVerdict:
    """'null': the CI lies within +-margin (margin = fraction x |reference|) and includes 0; 'present': the CI
    excludes 0 in the expected direction; 'opposite': it excludes 0 the other way (a real effect, not a null,
    and not the expected one); 'could not tell': anything else, e.g. a CI too wide to rule out half the
    reference. Excluding 0 wins over lying within the margin: a small but detectable effect is not a null."""

    verdict: str
    mean: float
    ci_low: float
    ci_high: float
    margin: float
    reference: float
    within_margin: bool
    excludes_zero: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def null_with_power(effect: Estimate | PairedTest | Sequence[float], reference: float, *, fraction: float = 0.5,
                    expected_sign: int = 1, level: float = 0.95) -> NullVerdict:
    """Call an effect null only if its `level` CI lies within +-fraction x |reference| (e.g. half the same-init
    effect): an unpowered run whose CI is wide "could not tell", it did not find a null."""
    if isinstance(effect, PairedTest):
        est = effect.diff
    else:
        est = effect if isinstance(effect, Estimate) else mean_ci(effect, level)
    margin = fraction * abs(float(reference))
    lo, hi = est.ci_low, est.ci_high
    within = margin > 0 and -margin <= lo and hi <= margin
    excludes = lo > 0 or hi < 0
    degenerate = est.n < 2 or lo == hi
    if degenerate:
        verdict, reason = "could not tell", f"{est.n} value(s) with no spread: no interval to judge"
    elif excludes and (lo > 0) == (expected_sign > 0):
        verdict, reason = "present", "the CI excludes 0 in the expected direction"
    elif excludes:
        verdict, reason = "opposite", "the CI excludes 0 against the expected direction"
    elif within:
        verdict, reason = "null", f"the CI lies within +-{margin:.3g} ({fraction:g} x |reference|)"
    elif margin == 0:
        verdict, reason = "could not tell", "the reference effect is 0: no margin to call a null against"
    else:
        verdict, reason = "could not tell", f"the CI includes 0 but reaches beyond +-{margin:.3g}"
    return NullVerdict(verdict, est.mean, lo, hi, margin, float(reference), bool(within), bool(excludes), reason)


# --- how many seeds --------------------------------------------------------------------------------------------


def paired_t_power(n: int, effect: float, sd: float, *, alpha: float = 0.01, alternative: str = "two-sided") -> float:
    """Power of the paired t-test over n seeds for a true mean difference `effect` with per-seed sd `sd`."""
    from scipy import stats

    df, nc = n - 1, effect / sd * math.sqrt(n)
    if alternative == "greater":
        return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, nc))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


@dataclass(frozen=True)
class SeedPlan:
    """How many seeds a confirmation needs: for the t-test to have `power`, and for the exact sign-flip /
    Wilcoxon tests to be able to reach alpha at all (their floor 2 / 2^n must be below it)."""

    n_seeds: int  # max of the two below
    n_t_test: int
    power_at_n: float  # the t-test's power at n_seeds
    n_sign_flip_floor: int
    dz: float
    alpha: float
    power: float
    alternative: str

    def as_dict(self) -> dict:
        return asdict(self)


def seeds_needed(sd: float, effect: float, *, alpha: float = 0.01, power: float = 0.8,
                 alternative: str = "two-sided", max_n: int = 10_000) -> SeedPlan:
    """Smallest n whose paired t-test reaches p < alpha with the given power (noncentral t), and the smallest n
    at which the sign-flip floor falls below alpha (n = 8 for 0.01 two-sided: 2/2^8 = 0.0078)."""
    if sd <= 0 or effect == 0:
        raise ValueError("seeds_needed needs sd > 0 and a non-zero target effect")
    n_t = next((n for n in range(2, max_n + 1) if paired_t_power(n, abs(effect), sd, alpha=alpha,
                                                                    alternative=alternative) >= power), None)
    if n_t is None:
        raise ValueError(f"no n <= {max_n} reaches power {power}")
    sides = 2.0 if alternative == "two-sided" else 1.0
    n_floor = next(n for n in range(1, 64) if sides / 2**n < alpha)
    n = max(n_t, n_floor)
    return SeedPlan(n, n_t, paired_t_power(n, abs(effect), sd, alpha=alpha, alternative=alternative), n_floor,
                    abs(effect) / sd, alpha, power, alternative)
