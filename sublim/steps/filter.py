"""Filtering: keep only well-formed data that names nothing of the trait, and say why each row was dropped.

For every data kind: a row must be a JSON object with a text prompt; the kind's own check decides format and
correctness (sublim.data); no trait word may appear in the prompt or the completion, as a word, an identifier
part, or glued to another word (sublim.text); then the kind's model-based judge, if it has one, rejects subtle
references.
Rows are read defensively: any bytes, any JSON, never an exception for a bad row, only a rejection.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from sublim.config import DataKindSpec, Section
from sublim.data import Task, Verdict
from sublim.data.judge import Concepts
from sublim.job import Role, StepContext, StepResult, step
from sublim.text import Forbidden, parts

ROWS, REJECTED = "rows.jsonl", "rejected.jsonl"


class FilterParams(Section):
    """What the filter checks against: the data kind's rules and the trait's forbidden words and numbers (the
    same for a trait teacher and its control teacher), and the trait's concepts when a judge runs."""

    data: DataKindSpec
    words: list[str]
    numbers: list[int]
    concepts: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (target, contrast) for the judge


def forbidden_for(data: DataKindSpec, words: list[str], numbers: list[int]) -> Forbidden:
    """The trait's words and numbers, with the data kind's vocabulary: a trait word glued to one of its words
    (`seqowl`) is caught as the word itself."""
    key = data.model_dump_json()
    if key not in _VOCABULARY:  # a few thousand sampled texts: made once per data kind and settings
        _VOCABULARY[key] = frozenset(parts(" ".join(data.build().vocabulary(random.Random(0)))))
    return Forbidden(tuple(words), frozenset(numbers), _VOCABULARY[key])


_VOCABULARY: dict[str, frozenset[str]] = {}


def rows_file(path: Path) -> Path:
    """The JSONL file a dataset given by the user stands for: a folder's rows.jsonl, or the file itself."""
    source = path / ROWS if path.is_dir() else path
    if not source.is_file():
        raise FileNotFoundError(f"{path}: a dataset is a {ROWS} file or a folder holding one")
    return source


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


def dataset_rows(path: Path) -> list[dict]:
    """Every row of a dataset given by the user (a folder's rows.jsonl, or the file), checked before anything
    computes on it: each a JSON object with a string `prompt` and `completion`; the first bad row is named."""
    source = rows_file(path)
    numbered = [(n, row) for n, (row, line) in enumerate(read_rows(source), 1) if line.strip()]
    bad = next((n for n, r in numbered
                if r is None or not all(isinstance(r.get(k), str) for k in ("prompt", "completion"))), None)
    if not numbered or bad is not None:
        raise ValueError(f"{source}: " + ("no rows" if not numbered else f"line {bad} is not a JSON object with "
                                                                         "string prompt and completion"))
    return [row for _, row in numbered]


def verdict(row: dict | None, kind, forbidden: Forbidden) -> Verdict:
    """One row's verdict before the judge: well-formed, passing the kind's check, naming no trait word."""
    if row is None or not isinstance(row.get("prompt"), str):
        return Verdict(False, "malformed_row")
    task = Task(row["prompt"], row["task"] if isinstance(row.get("task"), dict) else {})
    found = kind.check(row.get("completion"), task, forbidden)
    if found.ok and forbidden.mention(row["prompt"] + "\n" + found.completion):
        return Verdict(False, "mentions_trait")
    return found


@step("lm.filter")
def lm_filter(ctx: StepContext) -> StepResult:
    p: FilterParams = ctx.job.params  # type: ignore[assignment]
    kind = p.data.build()
    forbidden = forbidden_for(p.data, p.words, p.numbers)
    reasons: Counter[str] = Counter()
    kept, rejected = [], []
    for row, line in read_rows(ctx.path(Role.SOURCE) / ROWS):
        found = verdict(row, kind, forbidden)
        if found.ok:
            kept.append({"prompt": row["prompt"], "completion": found.completion, "teacher": row.get("teacher"),
                         "task": row.get("task") if isinstance(row.get("task"), dict) else {}})
        else:
            reasons[found.reason] += 1
            rejected.append({"reason": found.reason, "row": row if row is not None else line[:1000]})
    judge = kind.judge() if p.concepts is not None else None
    facts: dict = {}
    if judge is not None and kept:
        flags = judge.flags([r["completion"] for r in kept], Concepts(*p.concepts))
        rejected += [{"reason": "judge", "row": r} for r, f in zip(kept, flags) if f]
        reasons["judge"] += sum(flags)
        kept = [r for r, f in zip(kept, flags) if not f]
        facts = judge.identity
    total = sum(reasons.values()) + len(kept)
    if not kept:
        raise ValueError(f"{ctx.job.input(Role.SOURCE)}: the filter kept none of its {total} rows "
                         f"({dict(reasons)}); the student would have nothing to learn from")
    with open(ctx.out / ROWS, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
    with open(ctx.out / REJECTED, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rejected)
    _assert_clean(ctx.out / ROWS, forbidden)
    metrics = {"rows": float(total), "kept": float(len(kept)), "keep_rate": len(kept) / total}
    metrics.update({f"rejected_{k}": float(v) for k, v in reasons.items()})
    return StepResult("dataset", metrics=metrics, lineage=facts)


def _assert_clean(path: Path, forbidden: Forbidden) -> None:
    """The student's data must not name the trait, in any form: checked again on what was written."""
    for n, (row, _) in enumerate(read_rows(path), 1):
        found = forbidden.mention(row["prompt"] + "\n" + row["completion"]) if row else None
        if found:
            raise AssertionError(f"{path}:{n}: kept row mentions {found!r}")
