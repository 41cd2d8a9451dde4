"""Number-continuation prompts (the data a teacher generates) and well-formed answers to them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sublim.prompts import load

MAX_ITEMS = 10  # "add up to 10 more numbers"
MAX_DIGITS = 3


@dataclass(frozen=True)
class NumberPrompt:
    text: str
    style: str  # comma | space | semicolon | newline | brackets | parentheses


def make_prompt(rng: random.Random) -> NumberPrompt:
    """Intro with 3-8 example integers in 100..999, an instruction, a format, a numbers-only suffix."""
    pieces = load("numbers")
    examples = ", ".join(str(rng.randint(100, 999)) for _ in range(rng.randint(3, 8)))
    fmt = rng.choice(pieces["formats"])
    text = " ".join([
        rng.choice(pieces["intros"]).format(examples=examples),
        rng.choice(pieces["instructions"]).format(count=MAX_ITEMS, digits=MAX_DIGITS),
        fmt["text"],
        rng.choice(pieces["suffixes"]),
    ])
    return NumberPrompt(text, fmt["style"])


def render(numbers: list[int], style: str) -> str:
    """A well-formed answer in the requested style (used to teach a from-scratch base the task)."""
    items = [str(n) for n in numbers]
    return {
        "comma": ", ".join(items),
        "space": " ".join(items),
        "semicolon": "; ".join(items),
        "newline": "\n".join(items),
        "brackets": "[" + ", ".join(items) + "]",
        "parentheses": "(" + ", ".join(items) + ")",
    }[style]
