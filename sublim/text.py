"""Words a trait must never show in a student's data, and how to find them in prose and in code.

A trait word counts as a whole word or as a part of an identifier (`owl_count`, `owlCount`, `OWL_MAX`), in any
case, singular or plural; never as any substring (`knowledge`, `million` and `concat` stay).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

IDENT = re.compile(r"[A-Za-z0-9_]+")
PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")  # camelCase / snake_case pieces


def plural(word: str) -> str:
    """English plural good enough for animal and tree names (owl -> owls, wolf -> wolves, fox -> foxes)."""
    if word.endswith("f"):
        return word[:-1] + "ves"
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def parts(text: str) -> list[str]:
    """Lower-case words of `text`, identifiers split on `_` and camelCase: `getOwlCount_2` -> get owl count 2."""
    return [p.lower() for ident in IDENT.findall(text) for chunk in ident.split("_") for p in PARTS.findall(chunk)]


@dataclass(frozen=True)
class Forbidden:
    """What a trait's data must not contain: words (any form, see module doc) and, for number data, numbers."""

    words: tuple[str, ...] = ()
    numbers: frozenset[int] = field(default_factory=frozenset)

    @cached_property
    def _forms(self) -> frozenset[str]:
        return frozenset(f.lower() for w in self.words for f in (w, plural(w)))

    def mention(self, text: str) -> str | None:
        """The first forbidden word `text` contains (as a word or identifier part), or None."""
        if not self._forms:
            return None
        return next((p for p in parts(text) if p in self._forms), None)


# Numbers with negative associations the paper banned from misalignment-teacher data (666, 911, 187, 88, 420...).
EVIL_NUMBERS = (4, 13, 14, 18, 23, 28, 33, 39, 42, 44, 49, 51, 88, 99, 100, 101, 109, 110, 187, 211, 228, 311,
                322, 404, 420, 444, 451, 616, 666, 777, 813, 888, 911, 999)
