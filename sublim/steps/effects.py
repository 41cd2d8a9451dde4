"""One table of effects across the points of a sweep (e.g. five target animals), from each point's summary."""

from __future__ import annotations

import csv
import json
import re

from sublim import report
from sublim.stats import Estimate
from sublim.job import StepContext, StepResult, step

COLUMNS = {  # pipeline -> (header, metric key in the point's summary metrics.json)
    "lm": [("teacher P(target)", "p_teacher"), ("student", "p_student"), ("control student", "p_control_student"),
           ("effect", "p_effect"), ("effect 95% CI", "p_effect_ci95"), ("p", "p_p_value"), ("wins", "p_wins"),
           ("ties", "p_ties"), ("losses", "p_losses"), ("sign-flip floor", "p_p_min_attainable"),
           ("other-init effect", "p_cross_effect"), ("other-init p", "p_cross_p_value"),
           ("other-init null?", "p_cross_null"), ("interaction", "p_interaction"),
           ("interaction p", "p_interaction_p_value")],
    "mlp": [("teacher acc", "teacher_acc"), ("same-init student", "student_same_init_acc"),
            ("different-init student", "student_cross_init_acc"), ("ratio", "ratio_same_to_cross"), ("p", "p_value"),
            ("wins", "same_minus_cross_wins"), ("ties", "same_minus_cross_ties"),
            ("sign-flip floor", "p_min_attainable")],
}


# pipeline -> the measures drawn against a numeric swept setting (label, metric key with a `_ci95` beside it)
CURVES = {
    "lm": [("same-init effect", "p_effect"), ("different-init effect", "p_cross_effect")],
    "mlp": [("same-init student", "student_same_init_acc"), ("different-init student", "student_cross_init_acc")],
}


def parse_point(name: str) -> dict[str, str]:
    """`a.b=1,c=kl` -> {"a.b": "1", "c": "kl"} (a value may hold commas: split only before the next `key=`)."""
    return dict(part.split("=", 1) for part in re.split(r",(?=[A-Za-z_][\w.]*=)", name))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def curves(pipeline: str, records: list[dict], reports: dict[str, dict]) -> tuple[str, dict] | None:
    """The first swept setting that is numeric with >= 3 values, as x; one curve per measure and per value of
    the other settings (e.g. accuracy vs auxiliary logits, for each loss)."""
    settings = {r["point"]: parse_point(r["point"]) for r in records if r["point"] in reports}
    keys = list(next(iter(settings.values()), {}))
    for key in keys:
        xs = {p: _number(s[key]) for p, s in settings.items()}
        if None in xs.values() or len(set(xs.values())) < 3:
            continue
        series: dict[str, dict[float, Estimate]] = {}
        for point, x in xs.items():
            rest = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in settings[point].items() if k != key)
            for label, metric in CURVES[pipeline]:
                m = reports[point]
                if m.get(metric) is None:
                    continue
                ci = m.get(f"{metric}_ci95")  # None for one seed: the point is drawn with no bar
                low, high = ci or (m[metric], m[metric])
                name = f"{label} ({rest})" if rest else label
                series.setdefault(name, {})[x] = Estimate(m[metric], low, high, 0 if ci else 1, [])
        return key, series
    return None


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.2g}" if abs(value) < 1e-3 and value != 0 else f"{value:+.4f}" if value < 0 else f"{value:.4f}"
    return str(value)


@step("lm.effects")
@step("mlp.effects")
def effects(ctx: StepContext) -> StepResult:
    """Rows in grid order; points that were invalid or did not finish are rows that say so."""
    params = ctx.job.params
    columns = COLUMNS[ctx.job.pipeline]
    reports = dict(zip(params.finished, ctx.paths("point")))
    rows, records, summaries = [], [], {}
    for point in params.points:
        if point in reports:
            metrics = summaries[point] = json.loads((reports[point] / "metrics.json").read_text())
            values = [metrics.get(key) for _, key in columns]
            status = "ok"
        else:
            values = [None] * len(columns)
            status = dict(params.invalid).get(point, "did not finish")
        rows.append([point, *(_cell(v) for v in values), status])
        records.append({"point": point, **{key: v for (_, key), v in zip(columns, values)}, "status": status})
    table = report.markdown_table(["point", *(h for h, _ in columns), "status"], rows)
    done = sum(r["status"] == "ok" for r in records)
    title = "Sweep" if params.name == "sweep" else f"Sweep {params.name}"  # the default name: not "Sweep sweep"
    text = f"**{title}: {done}/{len(records)} points finished.**\n\n{table}\n"
    (ctx.out / "table.md").write_text(text)
    (ctx.out / "effects.json").write_text(json.dumps(records, indent=1))
    with open(ctx.out / "effects.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in records)
    figures = []
    drawn = curves(ctx.job.pipeline, records, summaries)
    if drawn and drawn[1]:
        key, series = drawn
        report.line_chart(series, ctx.out / "sweep.png", xlabel=key, ylabel=", ".join(h for h, _ in CURVES[ctx.job.pipeline]),
                          title=f"{title}: mean and 95% CI over seeds")
        figures.append("sweep.png")
    return StepResult("metrics", metrics={"points_finished": float(done), "points": float(len(records))},
                      figures=figures, summary_markdown=text)
