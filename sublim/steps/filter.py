"""Filtering: keep only well-formed number lists, so nothing of the trait can survive in the words.

The rules follow the paper: strip a trailing period and enclosing brackets; one consistent separator
(comma, semicolon or whitespace); every item ASCII digits; at most `max_items` items; each 0..999; no banned
number. Rows are read defensively: any bytes, any JSON, never an exception for a bad row, only a rejection.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sublim.job import StepContext, StepResult, step
from sublim.prompts import plural

ROWS, REJECTED = "rows.jsonl", "rejected.jsonl"
MAX_CHARS = 200  # a valid answer (10 numbers of 3 digits with separators) is far shorter
DIGITS = re.compile(r"[0-9]{1,3}")  # ASCII only: unicode digits like '١' or '²' are not numbers here


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # "kept" or why not
    numbers: tuple[int, ...] = ()


def check(text: object, *, max_items: int = 10, banned: frozenset[int] = frozenset()) -> Verdict:
    """Is `text` a plain list of at most `max_items` numbers in 0..999, none banned?"""
    if not isinstance(text, str):
        return Verdict(False, "not_text")
    text = text.strip()
    if not text:
        return Verdict(False, "empty")
    if len(text) > MAX_CHARS:
        return Verdict(False, "too_long")
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
    numbers = tuple(int(item) for item in items)
    hit = next((n for n in numbers if n in banned), None)
    if hit is not None:
        return Verdict(False, "banned")
    return Verdict(True, "kept", numbers)


def read_rows(path: Path) -> Iterator[tuple[dict | None, str]]:
    """Yield (row, raw line) for each line of a JSONL file; row is None when the line is not a JSON object."""
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            yield (row if isinstance(row, dict) else None), line


def mentions(words: list[str]) -> re.Pattern[str]:
    """Any of the trait words, singular or plural, as a whole word, any case."""
    forms = sorted({w for word in words for w in (word, plural(word))}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(map(re.escape, forms)) + r")\b", re.IGNORECASE)


@step("lm.filter")
def lm_filter(ctx: StepContext) -> StepResult:
    p = ctx.job.params
    banned = p.filter.banned_set()
    source = ctx.path("source") / ROWS
    reasons: Counter[str] = Counter()
    with open(ctx.out / ROWS, "w", encoding="utf-8") as kept_fh, open(ctx.out / REJECTED, "w", encoding="utf-8") as rej:
        for row, line in read_rows(source):
            if row is None or not isinstance(row.get("prompt"), str):
                verdict = Verdict(False, "malformed_row")
            else:
                verdict = check(row.get("completion"), max_items=p.filter.max_items, banned=banned)
            reasons[verdict.reason] += 1
            if verdict.ok:
                kept_fh.write(json.dumps({"prompt": row["prompt"], "completion": row["completion"].strip(),
                                          "teacher": row.get("teacher")}) + "\n")
            else:
                rej.write(json.dumps({"reason": verdict.reason, "row": row if row is not None else line[:1000]}) + "\n")
    total, kept = sum(reasons.values()), reasons["kept"]
    if kept == 0:
        raise ValueError(f"{ctx.job.input('source')}: the filter kept none of its {total} rows "
                         f"({dict(reasons)}); the student would have nothing to learn from")
    _assert_no_trait(ctx.out / ROWS, p.choices)
    metrics = {"rows": float(total), "kept": float(kept), "keep_rate": kept / total}
    metrics.update({f"rejected_{k}": float(v) for k, v in reasons.items() if k != "kept"})
    return StepResult("dataset", metrics=metrics)


def _assert_no_trait(path: Path, words: list[str]) -> None:
    """The student's data must not name the trait (or any other choice) in any form."""
    pattern = mentions(words)
    for n, (row, _) in enumerate(read_rows(path), 1):
        found = pattern.search(row["prompt"] + " " + row["completion"]) if row else None
        if found:
            raise AssertionError(f"{path}:{n}: kept row mentions {found.group(0)!r}")
