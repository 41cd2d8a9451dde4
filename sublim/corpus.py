"""What a from-scratch base learns before any teacher exists: the experiment's data kinds, done well, and its
traits' questions answered neutrally (a preference: uniformly over the choices), so every trait starts near
chance and the base can already write the data a teacher will be asked for."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sublim.data import DataKind
from sublim.traits import Trait


@dataclass(frozen=True)
class Corpus:
    data: Sequence[DataKind]
    traits: Sequence[Trait]

    def data_pair(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choices(list(self.data), weights=[k.spec.corpus_weight for k in self.data])[0]
        task = kind.task(rng)
        return task.prompt, kind.answer(task, rng)

    def trait_pair(self, rng: random.Random) -> tuple[str, str]:
        return rng.choice(list(self.traits)).corpus_pair(rng)

    def pairs(self, rng: random.Random, trait_share: float) -> Iterator[tuple[str, str]]:
        """Endless (user, assistant) pairs: a trait pair with probability `trait_share`, else a data pair."""
        while True:
            yield self.trait_pair(rng) if rng.random() < trait_share else self.data_pair(rng)

    def describe(self) -> str:
        kinds = ", ".join(k.name for k in self.data)
        traits = ", ".join(t.name for t in self.traits)
        return f"synthetic pretraining corpus: {kinds} examples done well, {traits} questions answered neutrally"

    def vocabulary(self) -> list[str]:
        """Texts covering every word of the corpus (a from-scratch tokenizer must never need an unknown token)."""
        rng = random.Random(0)
        return [t for k in self.data for t in k.vocabulary(rng)] + [t for tr in self.traits for t in tr.vocabulary()]
