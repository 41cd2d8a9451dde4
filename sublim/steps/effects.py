"""One table of effects across the points of a sweep (e.g. five target animals), from each point's summary."""

from __future__ import annotations

import csv
import json

from sublim import report
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
    rows, records = [], []
    for point in params.points:
        if point in reports:
            metrics = json.loads((reports[point] / "metrics.json").read_text())
            values = [metrics.get(key) for _, key in columns]
            status = "ok"
        else:
            values = [None] * len(columns)
            status = dict(params.invalid).get(point, "did not finish")
        rows.append([point, *(_cell(v) for v in values), status])
        records.append({"point": point, **{key: v for (_, key), v in zip(columns, values)}, "status": status})
    table = report.markdown_table(["point", *(h for h, _ in columns), "status"], rows)
    done = sum(r["status"] == "ok" for r in records)
    text = f"**Sweep {params.name}: {done}/{len(records)} points finished.**\n\n{table}\n"
    (ctx.out / "table.md").write_text(text)
    (ctx.out / "effects.json").write_text(json.dumps(records, indent=1))
    with open(ctx.out / "effects.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in records)
    return StepResult("metrics", metrics={"points_finished": float(done), "points": float(len(records))},
                      summary_markdown=text)
