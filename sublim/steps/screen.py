"""Screening: between filtering and student training, take out what carries a teacher's trait (sublim.screen)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from sublim.config import LmEvaluate, ModelSpec, ProbeSpec, ScreenSpec, Section, TraitKindSpec
from sublim.detection import CONTROL, TopicDetection, detection, mann_whitney, named_top, naming_p_value, robust_z
from sublim.job import Role, StepContext, StepResult, step
from sublim.screen import TokenReport, probe, same_vocabulary, screen_rows, token_scores
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
    if spec.method != "random":
        teacher = backend.load(ctx.path(Role.TEACHER), ctx.root) if ctx.job.inputs_named(Role.TEACHER) else None
        if teacher is not None:
            same_vocabulary(base, ctx.job.input(Role.INIT), [(teacher, ctx.job.input(Role.TEACHER))], ctx.root)
        scores = token_scores(backend, base, teacher, rows, spec.batch_size, spec.method)
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
    teacher, control_teacher = probe_teachers(ctx, p.probe, backend)
    start = time.perf_counter()
    shifts = probe(backend, ctx.path(Role.INIT), ctx.root, data, control, p.probe, [t.build() for t in p.panel],
                   p.evaluate, seed=ctx.job.rng_seed, teacher=teacher, control_teacher=control_teacher)
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


def probe_teachers(ctx: StepContext, spec: ProbeSpec, backend) -> tuple:
    """A distill probe learns each side from the model that wrote it, as a distilling student would: the data
    from its teacher (the first teacher input), the control from its own generator (the second: the control
    teacher, or the base for its own answers). An sft probe reads the sampled tokens only."""
    if spec.objective == "sft":
        return None, None
    teachers = ctx.paths(Role.TEACHER)
    if len(teachers) != 2:
        raise ValueError(f"{ctx.job.id}: a distill probe needs two teacher inputs (the data's generator, then the "
                         f"control's), got {len(teachers)}")
    loaded = tuple(backend.load(t, ctx.root) for t in teachers)
    same_vocabulary(backend.load(ctx.path(Role.INIT), ctx.root), ctx.job.input(Role.INIT),
                    list(zip(loaded, ctx.job.inputs_named(Role.TEACHER))), ctx.root)
    return loaded


class DetectSummaryParams(Section):
    truth: dict[str, str | None]  # line -> the panel answer its teacher's trait is ("preference:owl"); None: control


@step("lm.detect")
def lm_detect(ctx: StepContext) -> StepResult:
    """How well the probe tells trait-teacher datasets from control-teacher datasets: by its most unusual answer
    (is anything moving?) and, per trait, by that trait's own shift (is *it* moving?), each AUC with its exact
    Mann-Whitney p; how often it names the right trait (as `sublim ask` does, with its relabelling p); how
    often it flags each kind of dataset."""
    p: DetectSummaryParams = ctx.job.params  # type: ignore[assignment]
    rows = detect_rows(zip(ctx.job.inputs_named(Role.EVAL), ctx.paths(Role.EVAL)), p.truth)
    metrics = detect_metrics(rows)
    (ctx.out / "metrics.json").write_text(json.dumps({**metrics, "datasets_detail": rows}, indent=1))
    text = detect_table(metrics)
    (ctx.out / "table.md").write_text(text)
    scalar = {k: v for k, v in metrics.items() if isinstance(v, float)}
    return StepResult("metrics", metrics=scalar, summary_markdown=text)


def detect_rows(probes: Iterable[tuple[Path, Path]], truth: dict[str, str | None]) -> list[dict]:
    """One row per probed dataset from its probe.json: (its path in the project, where it is now) pairs; a
    probe's line (its folder name) is looked up in `truth` (None or absent: a control teacher's dataset)."""
    rows = []
    for rel, path in probes:
        found = json.loads((Path(path) / PROBE).read_text())
        label = truth.get(Path(rel).name) or CONTROL
        if not found["shifts"] or (label != CONTROL and label not in {s["key"] for s in found["shifts"]}):
            raise ValueError(f"{Path(path) / PROBE}: no shift for {label if found['shifts'] else 'any answer'}; "
                             "the probe's panel must hold every detection trait")
        top = found["shifts"][0]
        rows.append({"dataset": str(rel), "line": Path(rel).name, "seed": Path(rel).parent.name, "label": label,
                     "shifts": {s["key"]: s["shift"] for s in found["shifts"]}, "top": top["key"],
                     "top_shift": top["shift"], "flagged": found["flagged"],
                     "flagged_right": label in found["flagged"]})
    return rows


def detect_metrics(rows: list[dict]) -> dict:
    """The detection experiment's figures from each probed dataset's shifts and label: per trait, its own
    shift's AUC; trait-agnostic, the AUC of each dataset's most unusual answer and how often that answer is the
    right trait. "Unusual": the answer's robust z among all the datasets probed together (settled on the tuning
    seeds 0-2: AUC 0.83 and 9 of 12 named, against 0.56 and 8 of 12 by raw shift); raw figures kept beside."""
    positives = [r for r in rows if r["label"] != CONTROL]
    negatives = [r for r in rows if r["label"] == CONTROL]
    metrics: dict = {"datasets": len(rows), "positives": len(positives), "negatives": len(negatives)}
    if positives and negatives:
        shifts, labels = [r["shifts"] for r in rows], [r["label"] for r in rows]
        found = detection(shifts, labels)
        metrics["auc_raw"], metrics["auc_raw_p"] = mann_whitney([r["top_shift"] for r in positives],
                                                                [r["top_shift"] for r in negatives])
        metrics["named_raw_rate"], metrics["naming_raw_p"] = found.naming_rate, found.naming_p
        z = robust_z(shifts)
        tops = [max(s.values()) for s in z]
        metrics["auc"], metrics["auc_p"] = mann_whitney([t for t, lab in zip(tops, labels) if lab != CONTROL],
                                                        [t for t, lab in zip(tops, labels) if lab == CONTROL])
        right = named_top(z, labels)
        metrics.update(scored_by="robust z among the datasets", named_right_rate=right / len(positives),
                       naming_p=naming_p_value(z, labels, right, namer=named_top))
        metrics["by_trait"] = {t.topic: _trait_figures(t, list(zip(z, tops, labels))) for t in found.topics}
    if positives:
        metrics["flagged_right_rate"] = sum(r["flagged_right"] for r in positives) / len(positives)
        metrics["positives_flagged_rate"] = sum(bool(r["flagged"]) for r in positives) / len(positives)
    if negatives:
        metrics["negatives_flagged_rate"] = sum(bool(r["flagged"]) for r in negatives) / len(negatives)
    return metrics


def _trait_figures(t: TopicDetection, scored: list[tuple[dict, float, str]]) -> dict:
    """One trait's line: its own-shift AUC (from `detection`), and against the controls the AUC of its datasets'
    most unusual answer and how often that answer is this trait (`scored`: each dataset's z, top z, label)."""
    mine = [(z, top) for z, top, lab in scored if lab == t.topic]
    controls = [top for _, top, lab in scored if lab == CONTROL]
    return {"n": t.positives, "auc_own_shift": t.auc, "p_own_shift": t.p_value,
            "auc_most_unusual": mann_whitney([top for _, top in mine], controls)[0],
            "named_right_rate": named_top([z for z, _ in mine], [t.topic] * len(mine)) / t.positives}


def detect_table(m: dict) -> str:
    if "auc" not in m:
        return (f"**Detection needs trait-teacher and control-teacher datasets: {m['positives']} and "
                f"{m['negatives']}.**\n")
    lines = [f"**Detection by probe fine-tunes over {m['positives']} trait-teacher and {m['negatives']} "
             f"control-teacher datasets: AUC {m['auc']:.2f} by each dataset's most unusual answer (one-sided p = "
             f"{m['auc_p']:.2g}); the right trait named in {m['named_right_rate']:.0%} of trait datasets "
             f"(relabelling p = {m['naming_p']:.2g}); flagged: {m.get('positives_flagged_rate', 0):.0%} of trait "
             f"datasets, {m.get('negatives_flagged_rate', 0):.0%} of controls.**", "",
             f"Most unusual answer by its {m['scored_by']} (by raw shift: AUC {m['auc_raw']:.2f}, named "
             f"{m['named_raw_rate']:.0%}).", "",
             "| trait | datasets | AUC, own shift (p) | AUC, most unusual answer | named |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {v['n']} | {v['auc_own_shift']:.2f} ({v['p_own_shift']:.2g}) | {v['auc_most_unusual']:.2f} | "
              f"{v['named_right_rate']:.0%} |" for t, v in m["by_trait"].items()]
    return "\n".join(lines) + "\n"
