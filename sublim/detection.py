"""Detection statistics shared by `sublim ask` (a model reading the data) and the probe's detection experiment
(`sublim flow detect`): each dataset has a score per panel answer (`<trait>:<answer>`) and a label, the trait its
teacher had or `control`. Per answer: the AUC of its own score at telling its datasets from the controls, with
the exact one-sided Mann-Whitney p. Naming: a dataset is named right when its top answer, against the controls'
mean for each answer, is its label; the p is the share of relabellings of the same datasets that do as well."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

CONTROL = "control"


@dataclass
class TopicDetection:
    """How well one topic's score tells its own datasets from the controls."""

    topic: str
    positives: int
    controls: int
    auc: float  # P(score of a positive > score of a control), ties counting half
    p_value: float  # one-sided exact Mann-Whitney (positives score higher)


@dataclass
class Detection:
    topics: list[TopicDetection] = field(default_factory=list)
    named: int = 0  # positives whose top topic (score minus the controls' mean for it) is their own
    positives: int = 0
    naming_p: float = float("nan")  # share of random relabellings (same label counts) naming as many or more

    @property
    def naming_rate(self) -> float:
        return self.named / self.positives if self.positives else float("nan")


def detection(scores: Sequence[dict[str, float]], labels: Sequence[str]) -> Detection:
    """AUC per topic (its datasets vs the controls) and the naming rate, from each dataset's scores."""
    controls = [s for s, lab in zip(scores, labels) if lab == CONTROL]
    if not controls:
        raise ValueError("detection needs datasets labelled 'control'")
    out = Detection()
    for topic in sorted({lab for lab in labels if lab != CONTROL}):
        pos = [s[topic] for s, lab in zip(scores, labels) if lab == topic]
        neg = [c[topic] for c in controls]
        out.topics.append(TopicDetection(topic, len(pos), len(neg), *mann_whitney(pos, neg)))
    out.positives = sum(lab != CONTROL for lab in labels)
    out.named = named(scores, labels)
    out.naming_p = naming_p_value(scores, labels, out.named)
    return out


def mann_whitney(positives: Sequence[float], controls: Sequence[float]) -> tuple[float, float]:
    """(AUC, one-sided p): P(a positive scores above a control), ties counting half, and the Mann-Whitney
    test that positives score higher, by permutation of the actual scores (so ties are handled): exact over
    every split when there are at most 20,000, else a seeded Monte Carlo of 20,000 (scipy permutes only
    samples of two or more; a lone positive or control gets the exact table)."""
    import numpy as np
    from scipy import stats

    method: object = "exact"
    if min(len(positives), len(controls)) >= 2:
        method = stats.PermutationMethod(n_resamples=20_000, rng=np.random.default_rng(0))
    u = stats.mannwhitneyu(positives, controls, alternative="greater", method=method)
    return float(u.statistic) / (len(positives) * len(controls)), float(u.pvalue)


def named(scores: Sequence[dict[str, float]], labels: Sequence[str]) -> int:
    """Labelled datasets whose top topic, against the controls' mean for each topic, is their own label."""
    controls = [s for s, lab in zip(scores, labels) if lab == CONTROL]
    baseline = {k: sum(c[k] for c in controls) / len(controls) for k in controls[0]}
    return named_top([{k: v - baseline[k] for k, v in s.items()} for s in scores], labels)


def robust_z(scores: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Each dataset's score per answer as a robust z among all the datasets scored together: (score - median) /
    (1.4826 MAD) over them (1.2533 times the mean absolute deviation when most are equal, so one dataset that
    moves is still seen; 0 for an answer that does not vary at all). Raw shifts are not comparable across
    answers (a two-answer trait, aligned/misaligned, swings by several times what one animal of ten does, in
    every dataset); the z puts each answer on its own scale. It uses no labels, so tests on it stay exact, and the
    median and MAD stay put when a few datasets (a trait's) move."""
    import numpy as np

    keys = list(scores[0])
    x = np.array([[s[k] for k in keys] for s in scores], dtype=float)
    centre = np.median(x, axis=0)
    spread = np.abs(x - centre)
    mad = np.median(spread, axis=0)
    scale = np.where(mad > 0, 1.4826 * mad, 1.2533 * spread.mean(axis=0))
    z = np.divide(x - centre, scale, out=np.zeros_like(x), where=scale > 0)
    return [dict(zip(keys, row.tolist())) for row in z]


def named_top(scores: Sequence[dict[str, float]], labels: Sequence[str]) -> int:
    """Labelled datasets whose top-scoring answer is their own label (scores already standardised)."""
    return sum(max(s, key=s.get) == lab for s, lab in zip(scores, labels) if lab != CONTROL)


def arrangements(counts: dict[str, int], n: int) -> Iterator[list[str]]:
    """Every distinct sequence of n labels with these counts (a multiset's permutations, each once)."""
    if n == 0:
        yield []
        return
    for label in sorted(counts):
        if counts[label]:
            counts[label] -= 1
            for rest in arrangements(counts, n - 1):
                yield [label, *rest]
            counts[label] += 1


def naming_p_value(scores: Sequence[dict[str, float]], labels: Sequence[str], observed: int, draws: int = 2000,
                   seed: int = 0, namer=named) -> float:
    """How often labels shuffled among the same datasets name as many right: exact over every distinct
    relabelling when there are at most `draws` of them, else a seeded Monte Carlo (counting the observed one)."""
    counts = Counter(labels)
    total = math.factorial(len(labels)) // math.prod(math.factorial(c) for c in counts.values())
    if total <= draws:
        return sum(namer(scores, lab) >= observed for lab in arrangements(counts, len(labels))) / total
    rng, pool = random.Random(seed), list(labels)
    hits = 1  # the observed labelling
    for _ in range(draws):
        rng.shuffle(pool)
        hits += namer(scores, pool) >= observed
    return hits / (draws + 1)
