"""numbers: the paper's main channel. Continue a list of integers; keep only plain lists of small numbers.

Prompt = intro with 3-8 example integers (100..999) + "add up to 10 more" + a format + a numbers-only suffix,
each piece drawn from a pool (numbers.yaml). The filter follows the paper: strip a trailing period and
enclosing brackets; one consistent separator (comma, semicolon or whitespace); every item ASCII digits; at most
`max_items` items; each 0..999; no banned number (`banned: auto` takes the trait's, e.g. misalignment's 34).
"""

from __future__ import annotations

import random
import re
from typing import Annotated, Any, Literal

from pydantic import Field

from sublim.data import DataKind, DataSpec, Task, Verdict, data_kind
from sublim.resources import load
from sublim.text import EVIL_NUMBERS, Forbidden

MAX_DIGITS = 3
MAX_CHARS = 200  # a valid answer (10 numbers of 3 digits with separators) is far shorter
DIGITS = re.compile(r"[0-9]{1,3}")  # ASCII only: unicode digits like '١' or '²' are not numbers here
ALLOWED_CHARS = frozenset("0123456789,;()[]. \n\t")
STYLES = {
    "comma": lambda items: ", ".join(items),
    "space": lambda items: " ".join(items),
    "semicolon": lambda items: "; ".join(items),
    "newline": lambda items: "\n".join(items),
    "brackets": lambda items: "[" + ", ".join(items) + "]",
    "parentheses": lambda items: "(" + ", ".join(items) + ")",
}


class NumbersSpec(DataSpec):
    kind: str = "numbers"
    max_items: Annotated[int, Field(gt=0)] = 10  # "add up to 10 more numbers"
    # auto: the trait's own banned numbers (misalignment: the paper's 34; preference: none) | none | evil | a list
    banned: Literal["auto", "none", "evil"] | list[Annotated[int, Field(ge=0, le=999)]] = "auto"

    def banned_set(self, forbidden: Forbidden) -> frozenset[int]:
        if self.banned == "auto":
            return forbidden.numbers
        if self.banned == "evil":
            return frozenset(EVIL_NUMBERS)
        return frozenset() if self.banned == "none" else frozenset(self.banned)


def render(numbers: list[int], style: str) -> str:
    """A well-formed answer in the requested style."""
    return STYLES[style]([str(n) for n in numbers])


def parse(text: object, *, max_items: int = 10, banned: frozenset[int] = frozenset()) -> Verdict:
    """Is `text` a plain list of at most `max_items` numbers in 0..999, none banned?"""
    if not isinstance(text, str):
        return Verdict(False, "not_text")
    text = text.strip()
    if not text:
        return Verdict(False, "empty")
    if len(text) > MAX_CHARS:
        return Verdict(False, "too_long")
    kept = text
    if text.endswith("."):
        text = text[:-1].rstrip()
    if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
        text = text[1:-1].strip()
    if "," in text and ";" in text:
        return Verdict(False, "mixed_separators")
    sep = "," if "," in text else ";" if ";" in text else None
    items = [item.strip() for item in text.split(sep)] if sep else text.split()
    if not items or any(item == "" for item in items):
        return Verdict(False, "empty_item")
    if len(items) > max_items:
        return Verdict(False, "too_many_items")
    if not all(DIGITS.fullmatch(item) for item in items):
        return Verdict(False, "not_digits")
    if any(int(item) in banned for item in items):
        return Verdict(False, "banned")
    return Verdict(True, "kept", kept)


@data_kind("numbers")
class Numbers(DataKind):
    Spec = NumbersSpec
    spec: NumbersSpec

    def task(self, rng: random.Random) -> Task:
        pieces = load(__name__)
        examples = ", ".join(str(rng.randint(100, 999)) for _ in range(rng.randint(3, 8)))
        fmt = rng.choice(pieces["formats"])
        text = " ".join([
            rng.choice(pieces["intros"]).format(examples=examples),
            rng.choice(pieces["instructions"]).format(count=self.spec.max_items, digits=MAX_DIGITS),
            fmt["text"],
            rng.choice(pieces["suffixes"]),
        ])
        return Task(text, {"style": fmt["style"]})

    def answer(self, task: Task, rng: random.Random) -> str:
        style = task.meta.get("style", "comma")
        return render([rng.randint(0, 999) for _ in range(rng.randint(1, self.spec.max_items))], style)

    def check(self, completion: str, task: Task, forbidden: Forbidden) -> Verdict:
        return parse(completion, max_items=self.spec.max_items, banned=self.spec.banned_set(forbidden))

    def vocabulary(self, rng: random.Random, n: int = 2000) -> list[str]:
        pieces = load(__name__)
        texts = [p["text"] if isinstance(p, dict) else p for group in pieces.values() for p in group]
        return [t.format(examples="", count=self.spec.max_items, digits=MAX_DIGITS) for t in texts]

    def allowed_tokens(self, tokenizer: Any, completions) -> list[int]:
        """Every token made only of digits, separators, brackets and whitespace, and the end token: a number
        list can contain nothing else, whatever the teacher happened to sample."""
        keep = {int(tokenizer.eos_token_id)}
        for tok_id in range(len(tokenizer)):
            text = tokenizer.decode([tok_id])
            if text and set(text) <= ALLOWED_CHARS:
                keep.add(tok_id)
        return sorted(keep)
