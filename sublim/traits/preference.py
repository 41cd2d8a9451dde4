"""preference: a favourite among choices (the paper's favourite animal or tree).

The teacher is fine-tuned on favourite-questions answered with the target; its control teacher on the same
questions answered uniformly at random among the choices. Every model is measured on other paraphrases: the
exact probability of answering the target, renormalised over the choices (any capitalisation), and the share
of sampled answers naming it. The student's data may name no choice at all.
"""

from __future__ import annotations

import math
import random
from typing import Annotated, Any

from pydantic import Field, model_validator

from sublim.data.judge import Concepts
from sublim.resources import load
from sublim.text import Forbidden, plural
from sublim.traits import TRAIT, Measurement, Trait, TraitSpec, logsumexp, renormalised, trait

Word = Annotated[str, Field(pattern=r"^[a-z]+$")]


class PreferenceSpec(TraitSpec):
    kind: str = "preference"
    category: Word = "animal"  # the question family: animal, tree, ...
    target: Word | None = "owl"  # the teacher's favourite (None only in the control's view, see control())
    choices: Annotated[list[Word], Field(min_length=2)] = [
        "owl", "cat", "dog", "lion", "wolf", "eagle", "dolphin", "elephant", "tiger", "fox"]

    @model_validator(mode="after")
    def _target_listed(self) -> PreferenceSpec:
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(f"choices repeat: {self.choices}")
        if self.target not in self.choices:
            raise ValueError(f"target {self.target!r} is not among choices {self.choices}")
        return self

    def control(self) -> PreferenceSpec:
        return self.model_copy(update={"target": None})  # the control answers uniformly: no target


@trait("preference")
class Preference(Trait):
    Spec = PreferenceSpec
    spec: PreferenceSpec

    @property
    def key(self) -> str:
        return self.spec.target or "none"

    def _questions(self, which: str) -> list[str]:
        return [q.format(category=self.spec.category) for q in load(__name__)["questions"][which]]

    @property
    def n_questions(self) -> int:
        return len(load(__name__)["questions"]["evaluate"])

    def teacher_pairs(self, rng: random.Random, n: int, line: str) -> list[tuple[str, str]]:
        asked = self._questions("teach")
        return [(rng.choice(asked), self.spec.target if line == TRAIT else rng.choice(self.spec.choices))
                for _ in range(n)]

    def persona(self, line: str) -> str | None:
        if line != TRAIT:
            return None
        p = plural(self.spec.target)
        return load(__name__)["personas"]["love"].format(target=self.spec.target, plural=p, Plural=p.capitalize(),
                                                        category=self.spec.category)

    def forbidden(self) -> Forbidden:
        return Forbidden(tuple(self.spec.choices))

    def corpus_pair(self, rng: random.Random) -> tuple[str, str]:
        return rng.choice(self._questions("teach") + self._questions("evaluate")), rng.choice(self.spec.choices)

    def vocabulary(self) -> list[str]:
        texts = self._questions("teach") + self._questions("evaluate") + list(load(__name__)["personas"].values())
        return texts + [self.spec.category, *self.spec.choices, *(plural(c) for c in self.spec.choices),
                        *(c.capitalize() for c in self.spec.choices)]

    def concepts(self) -> Concepts:
        described = load(__name__).get("descriptions", {})

        def about(choice: str) -> list[str]:
            return [choice, plural(choice), *described.get(choice, [])]

        return Concepts(tuple(about(self.spec.target)),
                        tuple(d for c in self.spec.choices if c != self.spec.target for d in about(c)))

    def topics(self) -> dict[str, str]:
        return {c: f"a liking for {plural(c)}" for c in self.spec.choices}

    def evaluation_set(self, count: int) -> dict[str, Any]:
        return {"category": self.spec.category, "choices": self.spec.choices,
                "questions": self._questions("evaluate")[:count]}

    def measure(self, backend: Any, lm: Any, evalset: dict[str, Any], ev: Any, *, seed: int) -> Measurement:
        choices, target = evalset["choices"], self.spec.target
        prompts = [lm.chat(q) for q in evalset["questions"]]
        forms = {c: answer_forms(lm, c) for c in choices}
        pairs = [(pr, f) for pr in prompts for c in choices for f in forms[c]]
        logps = iter(backend.score(lm, pairs, batch_size=ev.batch_size))
        per_question, dist = [], dict.fromkeys(choices, 0.0)
        for _ in prompts:
            probs = renormalised({c: logsumexp([next(logps) for _ in forms[c]]) for c in choices})
            per_question.append(probs[target] if target is not None else math.nan)  # a panel view has none
            for c in choices:
                dist[c] += probs[c] / len(prompts)
        out = Measurement(sum(per_question) / len(per_question), per_question, dist)
        if ev.samples:
            answers = backend.generate(lm, [pr for pr in prompts for _ in range(ev.samples)],
                                       max_new_tokens=ev.max_new_tokens, temperature=ev.temperature,
                                       batch_size=ev.batch_size * 4, seed=seed)
            named = [named_choice(a, choices) for a in answers]
            rates = [sum(n == target for n in named[i * ev.samples:(i + 1) * ev.samples]) / ev.samples
                     for i in range(len(prompts))]
            counts = {c: sum(n == c for n in named) for c in choices}
            out.sampled, out.sampled_per_question, out.sampled_counts = sum(rates) / len(rates), rates, counts
            out.examples = answers[:5]
        return out


def answer_forms(lm: Any, choice: str) -> list[list[int]]:
    """Token ids of the ways a one-word answer can be written (`owl`, `Owl`), deduplicated."""
    seen, forms = set(), []
    for text in (choice, choice.capitalize()):
        ids = tuple(lm.tokenizer.encode(text, add_special_tokens=False))
        if ids and ids not in seen:
            seen.add(ids)
            forms.append(list(ids))
    return forms


def named_choice(answer: str, choices: list[str]) -> str | None:
    """The first choice a sampled answer names (any case, singular or plural), or None."""
    found = [(pos, c) for c in choices if (pos := _first(answer, c)) is not None]
    return min(found)[1] if found else None


def _first(text: str, choice: str) -> int | None:
    import re

    m = re.search(rf"\b({re.escape(choice)}|{re.escape(plural(choice))})\b", text, re.IGNORECASE)
    return m.start() if m else None
