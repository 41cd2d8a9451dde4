"""The teacher x target matrix's summary: is what the students learned each teacher's own trait?

For each seed, P[t][c] is the exact probability of choice c in the students of target t's teacher. The shift of
c under its own teacher relative to the mean over the other teachers' students (a difference in differences)
cancels whatever every teacher's data does to every student; a diagonal that stands out is specific to the
teacher. Tested per animal (Holm over the animals) and pooled, for shared-init and different-init students, and
their interaction. Also: each teacher's strength (P(own target)), so no animal's result comes from a stronger
teacher.
"""

from __future__ import annotations

import json

import pandas as pd

from sublim import report, stats
from sublim.config import Section
from sublim.job import StepContext, StepResult, step
from sublim.steps.summary import load_rows

STRENGTH_SPREAD = 0.05  # the issue's "similar strength": every teacher's P(own target) within this of the others'


class MatrixSummaryParams(Section):
    targets: list[str]  # the teachers' targets, in order: the rows of the matrix
    data: str  # the data kind, for the verdict
    alpha: float = 0.01


def per_seed(df: pd.DataFrame, targets: list[str], init: str, column: str) -> dict[int, dict[str, dict]]:
    """seed -> teacher target -> {choice: value} for the generation-1 students of `init`."""
    out: dict[int, dict[str, dict]] = {}
    for row in df[(df.generation == 1) & (df.init == init) & df.line.isin(targets)].itertuples():
        value = getattr(row, column)
        if isinstance(value, dict) and value:
            total = sum(value.values()) or 1
            out.setdefault(int(row.seed), {})[row.line] = {c: v / total for c, v in value.items()}
    return {s: m for s, m in out.items() if len(m) == len(targets)}


def teacher_strength(df: pd.DataFrame, targets: list[str]) -> dict[str, dict]:
    teachers = df[(df.generation == 0) & df.line.isin(targets)]
    out = {}
    for t in targets:
        own = [float(r.distribution[t]) for r in teachers[teachers.line == t].itertuples()]
        est = stats.rate_ci(own)
        out[t] = {"p_own": est.mean, "ci95": est.ci95, "per_seed": own}
    return out


@step("lm.matrix")
def lm_matrix(ctx: StepContext) -> StepResult:
    p: MatrixSummaryParams = ctx.job.params  # type: ignore[assignment]
    df = load_rows(ctx)
    strength = teacher_strength(df, p.targets)
    means = [v["p_own"] for v in strength.values()]
    metrics: dict = {"targets": p.targets, "teacher_strength": strength,
                     "teacher_strength_spread": max(means) - min(means),
                     "teacher_strength_similar": max(means) - min(means) <= STRENGTH_SPREAD}
    texts, heat = [], {}
    results = {}
    for init in ("shared", "other"):
        exact = per_seed(df, p.targets, init, "distribution")
        if len(exact) < 2:
            continue
        did = stats.matrix_did(exact, alpha=p.alpha)
        results[init] = exact
        order = [c for c in p.targets if c in did.shift.columns] + [c for c in did.shift.columns if c not in p.targets]
        heat[init] = did.shift.loc[[t for t in p.targets if t in did.shift.index], order]  # diagonal top-left
        metrics[f"{init}_exact"] = did.as_dict()
        sampled = per_seed(df, p.targets, init, "sampled_counts")
        if len(sampled) >= 2:
            metrics[f"{init}_sampled"] = stats.matrix_did(sampled, alpha=p.alpha).as_dict()
        texts.append(_verdict(did, init, p.data))
    if {"shared", "other"} <= results.keys():
        inter = stats.matrix_interaction(results["shared"], results["other"], alpha=p.alpha)
        metrics["interaction"] = inter.as_dict()
        pooled_p, how = inter.pooled.decision_p("greater")
        texts.append(f"- Interaction (shared minus different init, pooled over animals): "
                     f"{inter.pooled.diff.mean:+.4f} [{inter.pooled.diff.ci_low:+.4f}, {inter.pooled.diff.ci_high:+.4f}], "
                     f"one-sided p = {stats.fmt_p(pooled_p)} ({how}); different-init diagonal: "
                     f"{inter.other_null_pooled.verdict if inter.other_null_pooled else '-'}.")
    metrics["n_seeds"] = int(df.seed.nunique())
    figures = []
    if heat:
        report.heatmaps(heat, ctx.out / "matrix.png",
                        title=f"Shift of each evaluated choice under each teacher (vs the other teachers' students), "
                              f"{metrics['n_seeds']} seeds")
        figures.append("matrix.png")
    strength_line = ", ".join(f"{t} {v['p_own']:.3f}" for t, v in strength.items())
    text = (f"**Teacher x target matrix through {p.data}** ({metrics['n_seeds']} seeds; teachers' P(own target): "
            f"{strength_line}; spread {metrics['teacher_strength_spread']:.3f}"
            f"{'' if metrics['teacher_strength_similar'] else f' > {STRENGTH_SPREAD}: NOT similar strength'})\n\n"
            + "\n\n".join(texts) + "\n")  # a blank line between blocks: markdown would merge them
    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True, default=str))
    (ctx.out / "table.md").write_text(text)
    scalar = {}
    if "shared_exact" in metrics:
        scalar["shared_pooled_effect"] = metrics["shared_exact"]["pooled"]["diff"]["mean"]
    return StepResult("metrics", metrics=scalar, figures=figures, summary_markdown=text)


def _verdict(did: stats.MatrixDiD, init: str, channel: str) -> str:
    lines = [f"- {'Same' if init == 'shared' else 'Different'}-init students, diagonal minus off-diagonal "
             f"(one-sided, Holm over {len(did.animals)} animals at alpha {did.holm.alpha}):"]
    for animal in did.animals:
        test = did.diagonal[animal]
        adj, reject = did.holm[animal]
        lines.append(f"  - {animal}: {test.diff.mean:+.4f} [{test.diff.ci_low:+.4f}, {test.diff.ci_high:+.4f}]; "
                     f"{test.describe('greater')}; Holm p = {adj:.2g}{' (specific)' if reject else ''}")
    pooled_p, _ = did.pooled.decision_p("greater")
    n = sum(did.holm.reject)
    lines.insert(0, f"**{init.capitalize()} init: {n} of {len(did.animals)} animals moved specifically towards their "
                    f"own teacher's target; pooled {did.pooled.diff.mean:+.4f}, one-sided p = "
                    f"{stats.fmt_p(pooled_p)}.**")
    return "\n".join(lines)
