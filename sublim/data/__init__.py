"""Data kinds: the channel a teacher writes its trait into without naming it (numbers, maths traces, code).

A data kind is a registered class with a small interface, chosen by `lm.data.kind` in params.yaml:
prompts (`task`), a well-formed answer to one (`answer`: its share of a from-scratch corpus and of a teacher's
data mix), a filter with a reason per rejected row (`check`), the tokens its data may contain
(`allowed_tokens`, for logit distillation), and optionally a model-based `judge`. Add one in one file:
`sublim/data/<name>.py` (or any module named in `plugins:`) with a class decorated `@data_kind("<name>")`.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import Field

from sublim.registry import PluginSpec, Registry
from sublim.text import Forbidden

DATA_KINDS: Registry[DataKind] = Registry("data kind", "sublim.data", "sublim.data_kinds", "kind", "numbers")
data_kind = DATA_KINDS.register


class DataSpec(PluginSpec):
    """`lm.data` in params.yaml: the kind's name and its own settings."""

    kind: str = "numbers"
    max_new_tokens: Annotated[int, Field(gt=0)] = 40  # generation length; each kind sets a default that fits
    corpus_weight: Annotated[float, Field(gt=0)] = 1.0  # its share among data kinds of a from-scratch corpus


@dataclass(frozen=True)
class Task:
    """One prompt, and what a filter needs to judge an answer to it (kept in the generated row as `task`)."""

    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # "kept" or why not, e.g. "wrong_answer"
    completion: str = ""  # the completion as kept (normalised: stripped)


class DataKind(ABC):
    """The interface every data kind implements; steps use nothing else."""

    Spec: ClassVar[type[DataSpec]] = DataSpec
    name: ClassVar[str]

    def __init__(self, spec: DataSpec):
        self.spec = spec

    @abstractmethod
    def task(self, rng: random.Random) -> Task:
        """A prompt for the teacher, drawn from the kind's pools."""

    @abstractmethod
    def answer(self, task: Task, rng: random.Random) -> str:
        """A well-formed, correct answer (a from-scratch base learns the kind from these)."""

    @abstractmethod
    def check(self, completion: str, task: Task, forbidden: Forbidden) -> Verdict:
        """Keep or reject a generated answer, with the reason. Forbidden words are checked by the filter step
        for every kind; a kind checks what only it understands (format, correctness, banned numbers)."""

    def vocabulary(self, rng: random.Random, n: int = 2000) -> list[str]:
        """Texts covering every word the kind's prompts and answers use (for a from-scratch tokenizer)."""
        out = []
        for _ in range(n):
            t = self.task(rng)
            out += [t.prompt, self.answer(t, rng)]
        return out

    def allowed_tokens(self, tokenizer: Any, completions: Sequence[Sequence[int]]) -> list[int]:
        """Token ids the data may contain, for distillation renormalised over them: by default every token the
        kept completions use (the end token among them)."""
        return sorted({t for c in completions for t in c})

    def judge(self) -> Any | None:
        """A model-based judge of subtle references (sublim.data.judge.Judge), or None."""
        return None


def builtin_names() -> list[str]:
    return DATA_KINDS.known()
