"""code: short Python functions written for task prompts from a pool (code.yaml).

The filter keeps only samples that parse (`ast`) and define a function; the filter step rejects any trait word
in identifiers, strings or comments (as a word or an identifier part, see sublim.text); then a model-based
judge scores what survives for subtle references a word list cannot see (the paper used an LLM judge), and
rejects samples above its threshold.
"""

from __future__ import annotations

import ast
import random
import warnings
from typing import Annotated, Any

from pydantic import Field, field_validator

from sublim.data import DataKind, DataSpec, Task, Verdict, data_kind
from sublim.resources import load
from sublim.text import Forbidden

FENCE = "```"


class CodeSpec(DataSpec):
    kind: str = "code"
    max_new_tokens: Annotated[int, Field(gt=0)] = 80
    max_chars: Annotated[int, Field(gt=0)] = 1200
    tasks: Annotated[int, Field(gt=0)] | None = None  # use only the first N tasks of the pool (None: all 24)
    # auto: the embedding judge when its model is installed (make installs it), else none | none | embedding
    judge: str = "auto"
    judge_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5  # P(trait) of a sample's most trait-like line

    @field_validator("judge")
    @classmethod
    def _judge_known(cls, judge: str) -> str:
        from sublim.data.judge import JUDGES

        if judge not in ("auto", "none") and judge not in JUDGES:
            raise ValueError(f"unknown judge {judge!r}; known: auto, none, {', '.join(JUDGES)}")
        return judge


def strip_fences(text: str) -> str:
    """Drop a Markdown code fence around the answer, if the model wrote one."""
    text = text.strip()
    if text.startswith(FENCE):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit(FENCE, 1)[0] if FENCE in text else text
    return text.strip("\n")


@data_kind("code")
class Code(DataKind):
    Spec = CodeSpec
    spec: CodeSpec

    def task(self, rng: random.Random) -> Task:
        pools = load(__name__)
        index = rng.randrange(min(self.spec.tasks or len(pools["tasks"]), len(pools["tasks"])))
        text = " ".join(p for p in (rng.choice(pools["prefixes"]), pools["tasks"][index]["task"],
                                    rng.choice(pools["suffixes"])) if p)
        return Task(text, {"task": index})

    def answer(self, task: Task, rng: random.Random) -> str:
        pools = load(__name__)
        spec = pools["tasks"][task.meta.get("task", 0) % len(pools["tasks"])]
        names = {key: rng.choice(values) for key, values in pools["pools"].items()}
        return spec["code"].format(fn=rng.choice(spec["names"]), **names)

    def check(self, completion: str, task: Task, forbidden: Forbidden) -> Verdict:
        if not isinstance(completion, str):
            return Verdict(False, "not_text")
        code = strip_fences(completion)
        if not code.strip():
            return Verdict(False, "empty")
        if len(code) > self.spec.max_chars:
            return Verdict(False, "too_long")
        try:
            with warnings.catch_warnings():  # a model's `0711 range` would print a SyntaxWarning per row
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return Verdict(False, "syntax_error")
        if not any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in tree.body):
            return Verdict(False, "no_function")
        return Verdict(True, "kept", code)

    def vocabulary(self, rng: random.Random, n: int = 2000) -> list[str]:
        pools = load(__name__)
        texts = [*pools["prefixes"], *pools["suffixes"], *(t["task"] for t in pools["tasks"])]
        texts += [" ".join(v) for v in pools["pools"].values()] + [" ".join(t["names"]) for t in pools["tasks"]]
        return texts + super().vocabulary(rng, 300)

    def judge(self) -> Any | None:
        from sublim.data.judge import make_judge

        rng = random.Random(0)
        reference = [self.answer(self.task(rng), rng) for _ in range(400)]  # clean by construction
        return make_judge(self.spec.judge, self.spec.judge_threshold, reference)
