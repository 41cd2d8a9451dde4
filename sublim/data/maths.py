"""maths: arithmetic word problems answered with a step-by-step trace ending in a final answer.

The paper's GSM8K channel made synthetic and verifiable: each problem is built from a small program (a start
value, then operations), so the filter computes the right answer itself and keeps only traces whose final
answer equals it (the model's own arithmetic is never trusted). Sizes are small enough for a tiny model to
solve: one-digit operands and, by default, one operation (measured on a 0.2M-parameter tinylm pretrained on
maths, sampled at temperature 1: one operation kept 63% of traces, two operations 37% - each step's error
compounds, and a teacher must keep >= 50%).

    Ana has 3 pens. Then she gets 5 more. How many pens does Ana have now? ...
    3 + 5 = 8. The answer is 8.
"""

from __future__ import annotations

import operator
import random
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from sublim.data import DataKind, DataSpec, Task, Verdict, data_kind
from sublim.resources import load
from sublim.text import Forbidden

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
# The first "The answer is N." closes the trace; what a chatty model adds after it is cut (the kept completion
# is that prefix, so a student never learns the chatter), and N is checked against the computed answer.
FINAL = re.compile(r"The answer is (-?[0-9]+)(?:\.(?![0-9])|\s*\Z)")
MAX_CHARS = 400


class MathsSpec(DataSpec):
    kind: str = "maths"
    max_new_tokens: Annotated[int, Field(gt=0)] = 32
    max_operand: Annotated[int, Field(ge=2, le=99)] = 9  # operands 1..max_operand
    max_steps: Annotated[int, Field(ge=1, le=4)] = 1  # arithmetic operations per problem (module doc: why 1)
    # "*" too makes the second step add to products up to 81: a 0.3M-parameter tinylm then kept 19% of traces
    ops: Annotated[list[Literal["+", "-", "*"]], Field(min_length=1)] = ["+", "-"]

    @field_validator("ops")
    @classmethod
    def _unique(cls, ops: list[str]) -> list[str]:
        if len(set(ops)) != len(ops):
            raise ValueError(f"ops repeat: {ops}")
        return ops


def solve(start: int, steps: list[tuple[str, int]]) -> list[tuple[int, str, int, int]]:
    """The worked steps (x, op, y, result) of a problem program."""
    out, value = [], start
    for op, y in steps:
        result = OPS[op](value, y)
        out.append((value, op, y, result))
        value = result
    return out


def expected(meta: dict) -> int | None:
    """The right final answer of a row's problem program, or None when the program is malformed."""
    try:
        start = meta["start"]
        steps = [(str(op), y) for op, y in meta["steps"]]
        if not isinstance(start, int) or not all(op in OPS and isinstance(y, int) for op, y in steps):
            return None
        return solve(start, steps)[-1][3] if steps else start
    except (KeyError, TypeError, ValueError):
        return None


def trace(start: int, steps: list[tuple[str, int]]) -> str:
    worked = solve(start, steps)
    lines = [f"{x} {op} {y} = {r}." for x, op, y, r in worked]
    return " ".join([*lines, f"The answer is {worked[-1][3]}."])


@data_kind("maths")
class Maths(DataKind):
    Spec = MathsSpec
    spec: MathsSpec

    def task(self, rng: random.Random) -> Task:
        pools = load(__name__)
        who, items, top = rng.choice(pools["people"]), rng.choice(pools["items"]), self.spec.max_operand
        n_ops = rng.randint(1, self.spec.max_steps)
        a = rng.randint(1, top)
        steps: list[tuple[str, int]] = []
        if "*" in self.spec.ops and rng.random() < 0.5:
            b = rng.randint(2, top)
            steps.append(("*", b))
            text = [rng.choice(pools["start"]["groups"]).format(a=a, b=b, items=items, **who)]
            value = a * b
        else:
            text = [rng.choice(pools["start"]["have"]).format(a=a, items=items, **who)]
            value = a
        adds = [op for op in self.spec.ops if op != "*"] or ["+"]
        while len(steps) < n_ops:
            op = rng.choice(adds)
            b = rng.randint(1, top if op == "+" else max(1, min(top, value)))
            if op == "-" and b > value:
                op = "+"
            steps.append((op, b))
            text.append(rng.choice(pools["steps"][op]).format(b=b, items=items, **who))
            value = OPS[op](value, b)
        text.append(rng.choice(pools["questions"]).format(items=items, **who))
        text.append(rng.choice(pools["instructions"]))
        # the first step of a "groups" start is its product: the program starts from a, then "* b"
        return Task(" ".join(text), {"start": a, "steps": [[op, y] for op, y in steps]})

    def answer(self, task: Task, rng: random.Random) -> str:
        return trace(task.meta["start"], [(op, y) for op, y in task.meta["steps"]])

    def check(self, completion: str, task: Task, forbidden: Forbidden) -> Verdict:
        if not isinstance(completion, str):
            return Verdict(False, "not_text")
        text = completion.strip()
        if not text:
            return Verdict(False, "empty")
        right = expected(task.meta)
        if right is None:
            return Verdict(False, "no_task")
        found = FINAL.search(text)
        if found is None:
            return Verdict(False, "no_answer")
        kept = text[:found.end()].rstrip()
        if len(kept) > MAX_CHARS:
            return Verdict(False, "too_long")
        if int(found.group(1)) != right:
            return Verdict(False, "wrong_answer")
        return Verdict(True, "kept", kept)

    def vocabulary(self, rng: random.Random, n: int = 2000) -> list[str]:
        pools = load(__name__)
        texts = [*pools["items"], *pools["questions"], *pools["instructions"], "The answer is"]
        texts += [p for group in (*pools["start"].values(), *pools["steps"].values()) for p in group]
        texts += [f"{p['name']} {p['they']} {p['they'].capitalize()}" for p in pools["people"]]
        return texts + super().vocabulary(rng, 200)
