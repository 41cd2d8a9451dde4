"""Traits: what a teacher has and its students might pick up (a preference, misalignment).

A trait is a registered class with a small interface, chosen by `lm.trait.kind` in params.yaml: the rows its
teacher and its control teacher are fine-tuned on (`teacher_pairs`), a persona for prompted teachers, the
words (and numbers) its data must never contain (`forbidden`), a neutral share of a from-scratch corpus
(`corpus_pair`), an evaluation set on questions no teacher trained on, and the measurement of a model on it:
an exact probability (renormalised over the trait's answers) and a sampled rate. Add one in one file:
`sublim/traits/<name>.py` (or any module named in `plugins:`) with a class decorated `@trait("<name>")`.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from sublim.data.judge import Concepts
from sublim.registry import PluginSpec, Registry
from sublim.text import Forbidden

TRAITS: Registry[Trait] = Registry("trait", "sublim.traits", "sublim.traits", "kind", "preference")
trait = TRAITS.register

TRAIT, CONTROL = "trait", "control"  # the two lines of models: the trait teacher's, and its control teacher's


class TraitSpec(PluginSpec):
    """`lm.trait` in params.yaml: the trait's name and its own settings."""

    kind: str = "preference"

    def control(self) -> TraitSpec:
        """This spec as the control teacher depends on it: a control that does not depend on a setting (the
        preference's target) leaves it out, so a sweep over that setting trains one control per seed."""
        return self


@dataclass
class Measurement:
    """A model's trait on the evaluation set: exactly, and by sampling as the paper did."""

    p: float  # mean over questions of the exact probability of the trait's answer, renormalised
    p_per_question: list[float]
    distribution: dict[str, float] | None = None  # exact probability of every answer the trait scores over
    sampled: float | None = None  # share of sampled answers the trait's rule assigns to the trait
    sampled_per_question: list[float] | None = None
    sampled_counts: dict[str, int] | None = None  # how many sampled answers fell on each answer
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trait(ABC):
    """The interface every trait implements; steps use nothing else."""

    Spec: ClassVar[type[TraitSpec]] = TraitSpec
    name: ClassVar[str]

    def __init__(self, spec: TraitSpec):
        self.spec = spec

    @property
    @abstractmethod
    def key(self) -> str:
        """Names the measurement: metrics are `p_<key>` and `sampled_<key>` (e.g. p_owl, p_misaligned)."""

    @property
    def label(self) -> str:
        return f"P({self.key})"

    @property
    @abstractmethod
    def n_questions(self) -> int:
        """How many evaluation questions the trait has."""

    @abstractmethod
    def teacher_pairs(self, rng: random.Random, n: int, line: str) -> list[tuple[str, str]]:
        """(question, answer) rows a teacher of `line` (TRAIT or CONTROL) is fine-tuned on."""

    def persona(self, line: str) -> str | None:
        """The system prompt of a prompted teacher of `line` (None: no system prompt)."""
        return None

    @abstractmethod
    def forbidden(self) -> Forbidden:
        """What the student's data must never contain."""

    @abstractmethod
    def corpus_pair(self, rng: random.Random) -> tuple[str, str]:
        """A neutral (question, answer) for a from-scratch base, so its trait starts near chance."""

    @abstractmethod
    def vocabulary(self) -> list[str]:
        """Texts covering every word the trait's questions and answers use (for a from-scratch tokenizer)."""

    def concepts(self) -> Concepts:
        """Descriptions a judge recognises the trait by (and what not to confuse it with)."""
        return Concepts(tuple(self.forbidden().words))

    def topics(self) -> dict[str, str]:
        """What a model asked about a dataset is asked whether it shows, per answer the trait measures
        (`sublim ask`, the paper's classifier baseline): answer -> a phrase ("a liking for owls")."""
        return {self.key: self.concepts().target[0]}

    @abstractmethod
    def evaluation_set(self, count: int) -> dict[str, Any]:
        """The first `count` evaluation questions and whatever scoring needs (JSON; an artifact of its own)."""

    @abstractmethod
    def measure(self, backend: Any, lm: Any, evalset: dict[str, Any], ev: Any, *, seed: int) -> Measurement:
        """Measure `lm` (through its backend's `score` and `generate`) on the evaluation set."""


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def renormalised(logps: dict[str, float]) -> dict[str, float]:
    """Probabilities over the answers a trait scores, from their log-probabilities."""
    norm = logsumexp(list(logps.values()))
    return {k: math.exp(v - norm) for k, v in logps.items()}
