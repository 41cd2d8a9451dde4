"""Summaries: per-seed measurements -> means, CIs, the paired test, plots and a plain-words verdict."""

from __future__ import annotations

import csv
import json

import pandas as pd

from sublim import report
from sublim.job import StepContext, StepResult, step
from sublim.stats import mean_ci, paired_test
from sublim.steps.evaluate import EVAL


def load_rows(ctx: StepContext) -> pd.DataFrame:
    frames = []
    for path in ctx.paths("eval"):
        data = json.loads((path / EVAL).read_text())
        frames.append(pd.DataFrame(data["models"]).assign(seed=data["seed"]))
    return pd.concat(frames, ignore_index=True)


def per_seed(df: pd.DataFrame, value: str, **match) -> pd.Series:
    """One value per seed for the model picked by `match` (e.g. role="student", generation=1)."""
    sel = df
    for key, want in match.items():
        sel = sel[sel[key] == want]
    return sel.set_index("seed")[value].sort_index()


def flat(name: str, values: list[float]) -> dict:
    """`name` = mean over seeds, `name_ci95` = [low, high], `name_per_seed` = values: easy for `dvc metrics`."""
    est = mean_ci(values)
    return {name: est.mean, f"{name}_ci95": [est.ci_low, est.ci_high], f"{name}_per_seed": est.values}


@step("mlp.summary")
def mlp_summary(ctx: StepContext) -> StepResult:
    df = load_rows(ctx)
    df["label"] = df.apply(_label, axis=1)
    teacher = per_seed(df, "accuracy", role="teacher")
    same = per_seed(df, "accuracy", role="student", generation=1)
    cross = per_seed(df, "accuracy", role="control", generation=1)
    metrics = {**flat("teacher_acc", list(teacher)), **flat("student_same_init_acc", list(same))}
    for init in ("shared", "other"):
        metrics.update(flat(f"base_{init}_init_acc", list(per_seed(df, "accuracy", role="base", init=init))))
    verdict = f"Same-init student: {same.mean():.1%} (no different-init control was trained)."
    if len(cross):
        ratio = float(same.mean() / max(cross.mean(), 1e-9))
        metrics.update(flat("student_cross_init_acc", list(cross)), ratio_same_to_cross=ratio)
        verdict = (f"Same-init student {same.mean():.1%} vs different-init {cross.mean():.1%} ({ratio:.1f}x); "
                   f"{len(cross)} seed(s) are too few for a test over seeds.")
    if len(cross) >= 2:
        test = paired_test(list(same.loc[cross.index]), list(cross))
        metrics.update(p_value=test.p_value, p_value_permutation=test.p_value_permutation,
                       same_minus_cross=test.diff.mean, same_minus_cross_ci95=[test.diff.ci_low, test.diff.ci_high])
        verdict = _verdict(same.mean(), cross.mean(), ratio, test.p_value, test.wins, len(cross))
    metrics["generations"] = _decay(df)
    metrics["n_seeds"] = int(df.seed.nunique())
    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    _per_seed_csv(df, ctx.out / "per_seed.csv")
    bars = {label: mean_ci(list(g.sort_values("seed").accuracy)) for label, g in df.groupby("label", sort=False)}
    report.bar_chart(bars, ctx.out / "accuracy.png", ylabel="held-out digit accuracy", chance=0.1,
                     title="Subliminal transfer through auxiliary logits (95% CI over seeds)")
    figures = ["accuracy.png"]
    if df.generation.max() > 1:
        series = {init: {int(g): mean_ci(list(grp.accuracy)) for g, grp in sub.groupby("generation")}
                  for init, sub in df[df.role.isin(["teacher", "student", "control"])].groupby("init")}
        report.line_chart(series, ctx.out / "generations.png", ylabel="digit accuracy",
                          title="Trait across generations of students")
        figures.append("generations.png")
    table = report.markdown_table(
        ["model", "accuracy (95% CI)", "per seed"],
        [[label, str(est), ", ".join(f"{v:.2f}" for v in est.values)] for label, est in bars.items()],
    )
    text = f"{table}\n\n{verdict}\n"
    (ctx.out / "table.md").write_text(text)
    scalar = {k: v for k, v in metrics.items() if isinstance(v, float)}
    return StepResult("metrics", metrics=scalar, figures=figures, summary_markdown=text)


def _label(row: pd.Series) -> str:
    if row.role == "base":
        return f"base ({row.init} init)"
    if row.role == "teacher":
        return "teacher"
    who = "student, same init" if row.init == "shared" else "student, different init"
    return f"{who} (gen {int(row.generation)})"


def _verdict(same: float, cross: float, ratio: float, p: float, wins: int, n: int) -> str:
    shown = "transferred" if ratio >= 3 and p < 0.01 else "did NOT clearly transfer"
    return (f"Digit skill {shown} through auxiliary logits on noise: the same-init student reaches "
            f"{same:.1%} vs {cross:.1%} for the different-init student ({ratio:.1f}x; same-init higher in "
            f"{wins}/{n} seeds; paired t-test p = {p:.2g}).")


def _decay(df: pd.DataFrame) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for (gen, init), grp in df[df.role.isin(["teacher", "student", "control"])].groupby(["generation", "init"]):
        est = mean_ci(list(grp.sort_values("seed").accuracy))
        out[f"g{int(gen)}-{init}"] = {"acc": est.mean, "ci95": [est.ci_low, est.ci_high]}
    return out


def _per_seed_csv(df: pd.DataFrame, path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "model", "accuracy"])
        for r in df.sort_values(["label", "seed"]).itertuples():
            w.writerow([r.seed, r.label, f"{r.accuracy:.4f}"])
