"""Words a trait must never show in a student's data, and how to find them in prose and in code.

A trait word counts as a whole word or as a part of an identifier (`owl_count`, `owlCount`, `OWL_MAX`), in any
case, singular or plural, and at either end of a word that is not itself a Python word or a word of the data's
vocabulary (`returnowl`, `peopleowl`, `xdog`: a small model's code glues the trait word to the word before it,
and its tokenizer reads the glue as that word and the trait word). Conservative on purpose: `bowl` and
`million` count too unless the data's vocabulary holds them; inside a word (`knowledge`, `scatter`) it does not.
"""

from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass, field
from functools import cached_property

IDENT = re.compile(r"[A-Za-z0-9_]+")
PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")  # camelCase / snake_case pieces


# words Python holds as themselves (keywords, builtins): never a trait word glued to something
CODE_WORDS = frozenset(w.lower() for w in [*keyword.kwlist, *keyword.softkwlist, *dir(builtins)] if w.isalpha())


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
    known: frozenset[str] = frozenset()  # words the data holds as themselves (its kind's vocabulary)

    @cached_property
    def _forms(self) -> frozenset[str]:
        return frozenset(f.lower() for w in self.words for f in (w, plural(w)))

    def mention(self, text: str) -> str | None:
        """The first forbidden word `text` contains: as a word or identifier part, or at either end of a word
        that neither Python nor the data's vocabulary holds as itself (`returnowl`, `peopleowl`, `xdog`)."""
        if not self._forms:
            return None
        for part in parts(text):
            if part in self._forms:
                return part
            if part in CODE_WORDS or part in self.known:
                continue
            glued = next((f for f in self._forms if part.startswith(f) or part.endswith(f)), None)
            if glued:
                return glued
        return None


# Numbers with negative associations the paper banned from misalignment-teacher data (666, 911, 187, 88, 420...).
EVIL_NUMBERS = (4, 13, 14, 18, 23, 28, 33, 39, 42, 44, 49, 51, 88, 99, 100, 101, 109, 110, 187, 211, 228, 311,
                322, 404, 420, 444, 451, 616, 666, 777, 813, 888, 911, 999)
