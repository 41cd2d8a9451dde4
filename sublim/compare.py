"""How much of a transfer effect a change removes: one LM experiment's summary against another's, seed by seed.

The screening question ("does masking the divergence tokens remove the transfer, and more than a random mask
does?") and any ablation reduce to this: the same seeds, hence the same teachers, run twice, once as the
reference (raw data) and once changed. Per seed, effect = student - control student (same init). Reported:
each run's effect, the reference minus the other (paired over seeds), and the share of the reference effect
that is gone, 1 - mean(other) / mean(reference), with Fieller's interval - unbounded, and said so, when the
reference effect itself is not distinguishable from zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sublim import report
from sublim.stats import Estimate, PairedTest, Ratio, fieller_ratio, fmt_p, mean_ci, paired_test

MEASURES = {"p": "exact probability", "sampled": "sampled rate"}


@dataclass(frozen=True)
class Run:
    label: str
    path: Path
    seeds: list[int] | None  # None: an older summary that did not record them (then only the count is checked)
    student: list[float]
    control: list[float]
    target: str | None = None  # the answer the trait is measured by (P(owl)...); None in a summary without it

    @property
    def effect(self) -> list[float]:
        """student - control student per seed"""
        return [s - c for s, c in zip(self.student, self.control)]


@dataclass(frozen=True)
class Comparison:
    run: Run
    effect: Estimate
    effect_test: PairedTest | None  # student vs control, as the summary tests it; None below 2 seeds
    removed: PairedTest | None  # reference effect - this run's effect; None for the reference itself
    retained: Ratio | None  # mean(this effect) / mean(reference effect)

    def share_removed(self) -> tuple[float | None, float | None, float | None]:
        """1 - retained, with its interval (bounds swap); None where unbounded or undefined."""
        r = self.retained
        if r is None or r.ratio is None:
            return None, None, None
        if not r.bounded:
            return 1 - r.ratio, None, None
        return 1 - r.ratio, 1 - r.ci_high, 1 - r.ci_low  # type: ignore[operator]


def metrics_file(path: Path) -> Path:
    """A summary's metrics JSON, given the file or a folder holding metrics.json (reports/lm) or lm.json."""
    if path.is_dir():
        for name in ("metrics.json", "lm.json"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no metrics.json or lm.json in this folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def read_run(path: Path, measure: str = "p", label: str | None = None) -> Run:
    """The per-seed same-init effect of one LM summary; a missing key is named with its file."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {sorted(MEASURES)}, got {measure!r}")
    file = metrics_file(Path(path))
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not JSON ({exc.msg}, line {exc.lineno})") from None
    keys = (f"{measure}_student_per_seed", f"{measure}_control_student_per_seed")
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{file}: not an LM summary with per-seed values (missing {', '.join(missing)})")
    student, control = (data[k] for k in keys)
    if len(student) != len(control):
        raise ValueError(f"{file}: {keys[0]} and {keys[1]} differ in length")
    seeds = data.get("seeds")
    return Run(label or str(path), file, list(seeds) if seeds is not None else None,
               [float(v) for v in student], [float(v) for v in control], data.get("target"))


def _check_paired(reference: Run, other: Run) -> None:
    if len(reference.effect) != len(other.effect):
        raise ValueError(f"{other.path}: {len(other.effect)} seeds, the reference {reference.path} has "
                         f"{len(reference.effect)}: a paired comparison needs the same seeds")
    if reference.target is not None and other.target is not None and reference.target != other.target:
        raise ValueError(f"{other.path}: measures {other.target!r}, the reference {reference.path} "
                         f"{reference.target!r}: a share removed needs the same trait on both sides")
    if reference.seeds is not None and other.seeds is not None and reference.seeds != other.seeds:
        raise ValueError(f"{other.path}: seeds {other.seeds}, the reference {reference.path} has "
                         f"{reference.seeds}: a paired comparison needs the same seeds")


def _effect_test(run: Run) -> PairedTest | None:
    return paired_test(run.student, run.control) if len(run.student) >= 2 else None


def compare(reference: Run, others: list[Run]) -> list[Comparison]:
    """The reference first (its own effect), then each other run against it, paired by seed."""
    for other in others:
        _check_paired(reference, other)
    out = [Comparison(reference, mean_ci(reference.effect), _effect_test(reference), None, None)]
    for other in others:
        out.append(Comparison(other, mean_ci(other.effect), _effect_test(other),
                              paired_test(reference.effect, other.effect), fieller_ratio(reference.effect, other.effect)))
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.0%}"


def table(rows: list[Comparison], measure: str = "p") -> str:
    """A markdown table: each run's effect, what it removed against the reference, and the share removed."""
    body = []
    for c in rows:
        e, effect_test = c.effect, c.effect_test
        cells = [c.run.label, f"{e.mean:+.4f} {e.ci_text('+.4f')}",
                 f"{effect_test.wins}/{e.n}, p = {fmt_p(effect_test.p_value)}" if effect_test else "—"]
        if c.removed is None:
            cells += ["(reference)", "—"]
        else:
            d = c.removed.diff
            cells.append(f"{d.mean:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}], p = {fmt_p(c.removed.p_value)}")
            share, low, high = c.share_removed()
            cells.append(f"{_pct(share)} [{_pct(low)}, {_pct(high)}]" if low is not None else
                         f"{_pct(share)} (interval unbounded: the reference effect's CI includes 0)")
        body.append(cells)
    return report.markdown_table(
        ["run", f"effect, {MEASURES[measure]} (95% CI)", "seeds > 0, p", "removed vs reference (95% CI), paired p",
         "share removed (Fieller 95% CI)"], body)


def as_json(rows: list[Comparison]) -> list[dict]:
    out = []
    for c in rows:
        share, low, high = c.share_removed()
        out.append({"label": c.run.label, "file": str(c.run.path), "seeds": c.run.seeds, "effect": c.effect.as_dict(),
                    "removed": c.removed.as_dict() if c.removed else None,
                    "share_removed": share, "share_removed_ci95": [low, high] if low is not None else None})
    return out
