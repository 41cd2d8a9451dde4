"""Trait questions, answers and personas, from traits.yaml."""

from __future__ import annotations

from sublim.prompts import load, plural


def questions(kind: str, category: str) -> list[str]:
    """`teach` questions build fine-tuned teachers; `evaluate` questions (disjoint) measure every model."""
    return [q.format(category=category) for q in load("traits")["questions"][kind]]


def persona(target: str, category: str) -> str:
    """The system prompt of a prompted teacher."""
    p = plural(target)
    return load("traits")["personas"]["love"].format(target=target, plural=p, Plural=p.capitalize(), category=category)
