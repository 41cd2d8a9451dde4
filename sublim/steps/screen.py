"""Screening: between filtering and student training, take out what carries a teacher's trait (sublim.screen)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from sublim.config import LmEvaluate, ModelSpec, ProbeSpec, ScreenSpec, Section, TraitKindSpec
from sublim.job import Role, StepContext, StepResult, step
from sublim.screen import TokenReport, probe, screen_rows, token_scores
from sublim.steps.filter import ROWS, read_rows

SCORES, REPORT = "scores.jsonl", "report.md"


class ScreenParams(Section):
    model: ModelSpec
    screen: ScreenSpec


@step("lm.screen")
def lm_screen(ctx: StepContext) -> StepResult:
    """Score every completion token, then mask (or drop) the flagged ones; the scores and a report travel with
    the screened dataset, and its lineage records the settings and what the screen found."""
    p: ScreenParams = ctx.job.params  # type: ignore[assignment]
    backend, spec = p.model.build(), p.screen
    rows = [row for row, _ in read_rows(ctx.path(Role.SOURCE) / ROWS) if row]
    base = backend.load(ctx.path(Role.INIT), ctx.root)
    start = time.perf_counter()
    if spec.method == "divergence":
        teacher = backend.load(ctx.path(Role.TEACHER), ctx.root) if ctx.job.inputs_named(Role.TEACHER) else None
        scores = token_scores(backend, base, teacher, rows, spec.batch_size)
    else:  # random: only how many tokens each row has
        scores = [[0.0] * len(base.answer_ids(r["completion"])) for r in rows]
    seconds = time.perf_counter() - start
    screened, report = screen_rows(rows, scores, spec, seed=ctx.job.rng_seed,
                                   tokens_of=lambda r: [base.tokenizer.decode([t]) for t in base.answer_ids(r["completion"])])
    with open(ctx.out / ROWS, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in screened)
    with open(ctx.out / SCORES, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"prompt": r["prompt"], "scores": [round(x, 4) for x in s]}) + "\n"
                      for r, s in zip(rows, scores))
    (ctx.out / REPORT).write_text(render(report, spec))
    metrics = {"tokens": float(report.tokens), "flagged_share": report.flagged_share, "lost_share": report.lost_share,
               "rows_dropped": float(report.rows_dropped), "seconds_per_1000_rows": 1000 * seconds / max(len(rows), 1)}
    if report.threshold == report.threshold:  # not NaN (a random mask has no threshold)
        metrics["threshold"] = report.threshold
    facts = {"screen": json.dumps(spec.model_dump(mode="json", exclude={"probe"}), sort_keys=True),
             "screen_found": f"{report.flagged_share:.1%} of {report.tokens} tokens flagged, "
                             f"{report.lost_share:.1%} out of the loss ({spec.method}, {spec.action})"}
    return StepResult("dataset", metrics=metrics, lineage=facts, summary_markdown=None)


def render(report: TokenReport, spec: ScreenSpec) -> str:
    """The report a person reads: what was flagged, and the rows with the strongest divergence, marked."""
    lines = [f"# Screen ({spec.method}, {spec.action})", "",
             f"- tokens scored: {report.tokens}; flagged: {report.flagged} ({report.flagged_share:.1%})",
             f"- out of the loss: {report.lost} ({report.lost_share:.1%}); rows dropped: {report.rows_dropped} "
             f"of {report.rows}", f"- threshold: {report.threshold:.4g}", "", "## Top rows", ""]
    for top in report.top:
        tokens = top["tokens"] or []
        marked = "".join(f"[[{t}]]" if f else t for t, f in zip(tokens, top["flags"]))
        lines.append(f"- max score {top['max_score']:.3f}: `{top['prompt'][:60]}...` -> `{marked}`")
    return "\n".join(lines) + "\n"



PROBE = "probe.json"


class ProbeParams(Section):
    model: ModelSpec
    probe: ProbeSpec
    panel: list[TraitKindSpec]  # every trait the probe measures (it is not told which one the teacher had)
    evaluate: LmEvaluate


@step("lm.probe")
def lm_probe(ctx: StepContext) -> StepResult:
    """The model-level screen: probe fine-tunes of the base on the data and on the matched control, compared on
    every panel trait's questions; answers that moved significantly are flagged."""
    p: ProbeParams = ctx.job.params  # type: ignore[assignment]
    backend = p.model.build()
    data = [row for row, _ in read_rows(ctx.path(Role.DATA) / ROWS) if row]
    control = [row for row, _ in read_rows(ctx.path(Role.CONTROL) / ROWS) if row]
    teacher = backend.load(ctx.path(Role.TEACHER), ctx.root) if ctx.job.inputs_named(Role.TEACHER) else None
    start = time.perf_counter()
    shifts = probe(backend, ctx.path(Role.INIT), ctx.root, data, control, p.probe, [t.build() for t in p.panel],
                   p.evaluate, seed=ctx.job.rng_seed, teacher=teacher)
    seconds = time.perf_counter() - start
    flagged = [s.key for s in shifts if s.flagged]
    (ctx.out / PROBE).write_text(json.dumps({"flagged": flagged, "shifts": [asdict(s) for s in shifts]}, indent=1))
    table = "\n".join(f"| {s.key} | {s.shift:+.4f} | [{s.ci[0]:+.4f}, {s.ci[1]:+.4f}] | "
                      f"{'-' if s.p_value is None else f'{s.p_value:.2g}'} | {'FLAGGED' if s.flagged else ''} |"
                      for s in shifts)
    text = (f"**Probe: {', '.join(flagged) or 'no trait'} flagged** ({p.probe.seeds} probe seeds, "
            f"{p.probe.objective}, {p.probe.steps} steps)\n\n| panel answer | shift | 95% CI | p (one-sided) | |\n"
            f"|---|---|---|---|---|\n{table}\n")
    top = shifts[0] if shifts else None
    return StepResult("metrics", metrics={"flagged": float(len(flagged)), "seconds_per_1000_rows":
                                          1000 * seconds / max(len(data) + len(control), 1),
                                          **({"top_shift": top.shift} if top else {})},
                      lineage={"probe_flagged": ",".join(flagged) or "none"}, summary_markdown=text)


class DetectSummaryParams(Section):
    truth: dict[str, str | None]  # line -> the panel answer its teacher's trait is ("preference:owl"); None: control


@step("lm.detect")
def lm_detect(ctx: StepContext) -> StepResult:
    """How well the probe tells trait-teacher datasets from control-teacher datasets (AUC of its top shift),
    how often it names the right trait, and how often it flags each kind of dataset."""
    from sklearn.metrics import roc_auc_score

    p: DetectSummaryParams = ctx.job.params  # type: ignore[assignment]
    rows = []
    for rel, path in zip(ctx.job.inputs_named(Role.EVAL), ctx.paths(Role.EVAL)):
        found = json.loads((path / PROBE).read_text())
        line = rel.name
        top = found["shifts"][0] if found["shifts"] else {"key": None, "shift": 0.0}
        truth = p.truth.get(line)
        rows.append({"dataset": str(rel), "line": line, "seed": rel.parent.name, "positive": truth is not None,
                     "trait": truth, "score": top["shift"], "top": top["key"], "flagged": found["flagged"],
                     "named_right": truth is not None and top["key"] == truth,
                     "flagged_right": truth in found["flagged"] if truth else False})
    positives = [r for r in rows if r["positive"]]
    negatives = [r for r in rows if not r["positive"]]
    metrics: dict = {"datasets": len(rows), "positives": len(positives), "negatives": len(negatives)}
    if positives and negatives:
        metrics["auc"] = float(roc_auc_score([r["positive"] for r in rows], [r["score"] for r in rows]))
    if positives:
        metrics["named_right_rate"] = sum(r["named_right"] for r in positives) / len(positives)
        metrics["flagged_right_rate"] = sum(r["flagged_right"] for r in positives) / len(positives)
        metrics["positives_flagged_rate"] = sum(bool(r["flagged"]) for r in positives) / len(positives)
    if negatives:
        metrics["negatives_flagged_rate"] = sum(bool(r["flagged"]) for r in negatives) / len(negatives)
    by_trait = {}
    for trait in sorted({r["trait"] for r in positives}):
        mine = [r for r in positives if r["trait"] == trait]
        entry = {"n": len(mine), "named_right_rate": sum(r["named_right"] for r in mine) / len(mine)}
        if negatives:
            entry["auc"] = float(roc_auc_score([1] * len(mine) + [0] * len(negatives),
                                               [r["score"] for r in mine + negatives]))
        by_trait[trait] = entry
    metrics["by_trait"] = by_trait
    (ctx.out / "metrics.json").write_text(json.dumps({**metrics, "datasets_detail": rows}, indent=1))
    lines = [f"**Detection by probe fine-tunes: AUC {metrics.get('auc', float('nan')):.2f} over {len(positives)} "
             f"trait-teacher and {len(negatives)} control-teacher datasets; the right trait named first in "
             f"{metrics.get('named_right_rate', 0):.0%} of trait datasets.**", "",
             "| trait | datasets | AUC vs controls | named first |", "|---|---|---|---|"]
    lines += [f"| {t} | {v['n']} | {v.get('auc', float('nan')):.2f} | {v['named_right_rate']:.0%} |"
              for t, v in by_trait.items()]
    text = "\n".join(lines) + "\n"
    (ctx.out / "table.md").write_text(text)
    scalar = {k: v for k, v in metrics.items() if isinstance(v, float)}
    return StepResult("metrics", metrics=scalar, summary_markdown=text)
