"""Summaries: per-seed measurements -> means, CIs, the paired test, plots and a plain-words verdict."""

from __future__ import annotations

import csv
import json

import pandas as pd

from sublim import report
from sublim.config import Section
from sublim.job import Role, StepContext, StepResult, step
from sublim.stats import NO_INTERVAL, PairedTest, fmt_p, interaction_test, null_with_power, paired_test, rate_ci
from sublim.steps.evaluate import EVAL


class LmSummaryParams(Section):
    data: str  # the data kind's name, for the verdict ("through numbers")
    alpha: float = 0.01  # the verdict's level (params.yaml confirm.alpha: fixed before a confirmation runs)


def load_rows(ctx: StepContext) -> pd.DataFrame:
    frames = []
    for path in ctx.paths(Role.EVAL):
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
    """A rate over seeds: `name` = its mean, `name_ci95` = [low, high] within [0, 1] (None for one
    seed), `name_per_seed` = values."""
    est = rate_ci(values)
    return {name: est.mean, f"{name}_ci95": est.ci95, f"{name}_per_seed": est.values}


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
        metrics.update(paired_metrics(test, "same_minus_cross", "same_minus_cross_"))
        # the p-values keep their historical un-prefixed names
        for key in ("p_value", "p_value_one_sided", "p_value_permutation", "p_value_permutation_one_sided",
                    "p_min_attainable", "p_value_wilcoxon", "p_value_undefined"):
            if f"same_minus_cross_{key}" in metrics:
                metrics[key] = metrics.pop(f"same_minus_cross_{key}")
        verdict = _verdict(same.mean(), cross.mean(), ratio, test)
    metrics["generations"] = _decay(df)
    metrics["n_seeds"] = int(df.seed.nunique())
    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    _per_seed_csv(df, ctx.out / "per_seed.csv")
    bars = {label: rate_ci(list(g.sort_values("seed").accuracy)) for label, g in df.groupby("label", sort=False)}
    report.bar_chart(bars, ctx.out / "accuracy.png", ylabel="held-out digit accuracy", chance=0.1,
                     title="Subliminal transfer through auxiliary logits (95% CI over seeds)")
    figures = ["accuracy.png"]
    if df.generation.max() > 1:
        series = {init: {int(g): rate_ci(list(grp.accuracy)) for g, grp in sub.groupby("generation")}
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


def _verdict(same: float, cross: float, ratio: float, test: PairedTest) -> str:
    p, source = test.decision_p()
    shown = "transferred" if ratio >= 3 and p < 0.01 and test.diff.mean > 0 else "did NOT clearly transfer"
    return (f"Digit skill {shown} through auxiliary logits on noise: the same-init student reaches "
            f"{same:.1%} vs {cross:.1%} for the different-init student ({ratio:.1f}x; same-init "
            f"{test.describe()}; the verdict uses the {source}: p = {fmt_p(p)}).")


def paired_metrics(test: PairedTest, effect_key: str, stem: str) -> dict:
    """A paired test as flat metrics: `effect_key` (+ _ci95, _dz, _dz_ci95) and `stem` + p_value, wins, ties...
    A p the t-test cannot give (no spread) is None with `stem`p_value_undefined saying why, never 0."""
    out = {effect_key: test.diff.mean, f"{effect_key}_ci95": [test.diff.ci_low, test.diff.ci_high],
           f"{effect_key}_dz": test.dz, f"{effect_key}_dz_ci95": None if test.dz_ci is None else list(test.dz_ci),
           f"{stem}p_value": test.p_value, f"{stem}p_value_one_sided": test.p_value_one_sided,
           f"{stem}p_value_permutation": test.p_value_permutation,
           f"{stem}p_value_permutation_one_sided": test.p_value_permutation_one_sided,
           f"{stem}p_min_attainable": test.p_min_attainable, f"{stem}p_value_wilcoxon": test.p_value_wilcoxon,
           f"{stem}wins": test.wins, f"{stem}losses": test.losses, f"{stem}ties": test.ties}
    if test.p_value_undefined is not None:
        out[f"{stem}p_value_undefined"] = test.p_value_undefined
    return out


def _decay(df: pd.DataFrame) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for (gen, init), grp in df[df.role.isin(["teacher", "student", "control"])].groupby(["generation", "init"]):
        est = rate_ci(list(grp.sort_values("seed").accuracy))
        out[f"g{int(gen)}-{init}"] = {"acc": est.mean, "ci95": est.ci95}
    return out


def _per_seed_csv(df: pd.DataFrame, path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "model", "accuracy"])
        for r in df.sort_values(["label", "seed"]).itertuples():
            w.writerow([r.seed, r.label, f"{r.accuracy:.4f}"])


LM_GROUPS = {  # metric key -> (label, line, init, generation) of the model; line "base" = the base of an init
    "base": ("base", "base", "shared", None),
    "base_other_init": ("base (other init)", "base", "other", None),
    "teacher": ("teacher", "trait", "shared", 0),
    "control_teacher": ("control teacher", "control", "shared", 0),
    "student": ("student", "trait", "shared", 1),
    "control_student": ("control student", "control", "shared", 1),
    "student_other_init": ("student, other init", "trait", "other", 1),
    "control_other_init": ("control, other init", "control", "other", 1),
    "student_cross": ("student, other model (sft)", "trait", "cross", 1),
    "control_cross": ("control, other model (sft)", "control", "cross", 1),
    "in_context": ("base + trait data in context", "trait", "icl", 1),
    "in_context_control": ("base + control data in context", "control", "icl", 1),
}


def lm_values(df: pd.DataFrame, line: str, init: str, gen: int | None, value: str, seeds: list[int]) -> pd.Series:
    """One value per seed (each seed has its own bases, so a base is a model of the seed like any other)."""
    if line == "base":
        sel = df[(df.role == "base") & (df.init == init)]
    else:
        sel = df[(df.line == line) & (df.init == init) & (df.generation == gen)]
    return sel.drop_duplicates("seed").set_index("seed")[value].sort_index().loc[lambda v: v.index.isin(seeds)]


@step("lm.summary")
def lm_summary(ctx: StepContext) -> StepResult:
    df = load_rows(ctx)
    first = json.loads((ctx.paths(Role.EVAL)[0] / EVAL).read_text())
    target, label = first["target"], first.get("label", f"P({first['target']})")
    channel = ctx.job.params.data
    seeds = sorted(int(s) for s in df.seed.dropna().unique())
    metrics: dict = {"target": target, "n_seeds": len(seeds), "seeds": seeds}  # seeds: what pairs two runs
    bars, texts = {}, []
    for measure, col in (("p", "p_target"), ("sampled", "sampled_rate")):
        if df[col].isna().all():
            continue
        series = {key: lm_values(df, line, init, gen, col, seeds) for key, (_, line, init, gen) in LM_GROUPS.items()}
        series = {k: v for k, v in series.items() if len(v)}
        for key, values in series.items():
            metrics.update(flat(f"{measure}_{key}", list(values)))
        if measure == "p":
            bars = {key: rate_ci(list(values)) for key, values in series.items()}
        texts.append(_lm_tests(metrics, series, measure, target, label, channel, ctx.job.params.alpha))
    metrics["generations"] = _lm_decay(df)
    (ctx.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    report.bar_chart({LM_GROUPS[k][0]: est for k, est in bars.items()}, ctx.out / "trait.png",
                     ylabel=f"{label} (exact, renormalised)",
                     title=f"Trait rate per model, 95% CI over {len(seeds)} seeds")
    figures = ["trait.png"]
    if df.generation.max() > 1:
        series = {line: {int(g): rate_ci(list(grp.p_target)) for g, grp in sub.groupby("generation")}
                  for line, sub in df[(df.init == "shared") & df.line.notna()].groupby("line")}
        report.line_chart(series, ctx.out / "generations.png", ylabel=label, title="Trait across generations")
        figures.append("generations.png")
    rows = [[LM_GROUPS[key][0], str(est), _fmt(metrics, "sampled", key)] for key, est in bars.items()]
    later, effects = _later_generations(df, seeds, label)
    table = report.markdown_table(["model", f"{label} exact (95% CI)", "sampled rate (95% CI)"], rows + later)
    text = table + "\n\n" + "\n\n".join(texts + ([effects] if effects else [])) + "\n"
    (ctx.out / "table.md").write_text(text)
    with open(ctx.out / "per_seed.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "model", "p_target", "sampled_rate"])
        for r in df.sort_values(["model"]).itertuples():
            w.writerow([r.seed if r.seed == r.seed else "", r.model, f"{r.p_target:.5f}",
                        "" if r.sampled_rate is None or r.sampled_rate != r.sampled_rate else f"{r.sampled_rate:.4f}"])
    scalar = {k: v for k, v in metrics.items() if isinstance(v, float)}
    return StepResult("metrics", metrics=scalar, figures=figures, summary_markdown=text)


def _fmt(metrics: dict, measure: str, group: str) -> str:
    key = f"{measure}_{group}"
    if key not in metrics:
        return "-"
    ci = metrics[f"{key}_ci95"]
    return f"{metrics[key]:.3f} " + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else NO_INTERVAL)


def _effect_line(who: str, what: str, x: pd.Series, y: pd.Series, test) -> str:
    """One student against its control, paired by seed: both means, the difference with its CI, the test."""
    return (f"- {who}: {what} {x.mean():.4f} vs {y.mean():.4f} for its control ({test.diff.mean:+.4f}, "
            f"95% CI [{test.diff.ci_low:+.4f}, {test.diff.ci_high:+.4f}]; {test.describe()}).")


def _lm_tests(metrics: dict, series: dict[str, pd.Series], measure: str, target: str, label: str, channel: str,
              alpha: float) -> str:
    """Student vs its control teacher's student (same init), the same for the other init, and their
    interaction (same-init effect minus different-init effect), all paired by seed; the different-init
    effect is called null only if its CI lies within half the same-init effect."""
    what = label if measure == "p" else f"sampled '{target}' rate"
    lines, tests = [], {}
    who_is = {"": "Same-init student", "cross_": "Different-init student",
              "model_": "Student of another model (sft)", "icl_": "Base with the teacher's data in context"}
    for name, a, b in (("", "student", "control_student"), ("cross_", "student_other_init", "control_other_init"),
                       ("model_", "student_cross", "control_cross"), ("icl_", "in_context", "in_context_control")):
        if a not in series or b not in series or len(series[a]) < 2:
            continue
        x, y = series[a], series[b].loc[series[a].index]
        test = tests[name] = paired_test(list(x), list(y))
        metrics.update(paired_metrics(test, f"{measure}_{name}effect", f"{measure}_{name}"))
        lines.append(_effect_line(who_is[name], what, x, y, test))
    if "" in tests and "cross_" in tests:
        seeds = series["student"].index.intersection(series["student_other_init"].index)
        if len(seeds) >= 2:
            inter = interaction_test(*(list(series[k].loc[seeds]) for k in
                                       ("student", "control_student", "student_other_init", "control_other_init")))
            metrics.update(paired_metrics(inter, f"{measure}_interaction", f"{measure}_interaction_"))
            lines.append(f"- Interaction (same-init effect minus different-init effect, paired by seed): "
                         f"{inter.diff.mean:+.4f}, 95% CI [{inter.diff.ci_low:+.4f}, {inter.diff.ci_high:+.4f}]; "
                         f"{inter.describe()}.")
        null = null_with_power(tests["cross_"], reference=tests[""].diff.mean)
        metrics.update({f"{measure}_cross_null": null.verdict, f"{measure}_cross_null_margin": null.margin})
        lines.append(f"- Different-init effect against +-half the same-init effect (+-{null.margin:.4f}): "
                     f"**{null.verdict}** ({null.reason}).")
    for name in ("model_", "icl_"):  # the paper's other controls: null only with power
        if name in tests and "" in tests:
            null = null_with_power(tests[name], reference=tests[""].diff.mean)
            metrics.update({f"{measure}_{name}null": null.verdict, f"{measure}_{name}null_margin": null.margin})
            lines.append(f"- {who_is[name]} against +-half the same-init effect (+-{null.margin:.4f}): "
                         f"**{null.verdict}** ({null.reason}).")
    if measure == "p" and "" in tests:
        p, source = tests[""].decision_p()
        metrics["p_value"] = metrics["p_p_value"]  # the headline test: same-init student vs its control
        verdict = "transmitted" if p < alpha and tests[""].diff.mean > 0 else "NOT clearly transmitted"
        lines.insert(0, f"**The trait ({target}) was {verdict} through {channel} to the same-init student** "
                        f"({source} p = {fmt_p(p)}).\n")
    elif measure == "p" and "student" in series and "control_student" in series:
        lines.insert(0, f"**The trait ({target}) through {channel}: student {series['student'].mean():.4f} vs control "
                        f"{series['control_student'].mean():.4f}; {len(series['student'])} seed(s) are too few for a "
                        "test over seeds.**\n")
    return "\n".join(lines)


def _later_generations(df: pd.DataFrame, seeds: list[int], label: str) -> tuple[list[list[str]], str]:
    """Table rows for the students of generations 2.. (each line and init, with CIs over seeds), and each later
    generation's same-init effect against its control student, paired by seed: the trait generation by
    generation, as the MLP summary shows it."""
    rows, lines = [], []
    for gen in sorted(int(g) for g in df.generation.dropna().unique() if g > 1):
        values = {}
        for line, init in (("trait", "shared"), ("control", "shared"), ("trait", "other"), ("control", "other")):
            p = lm_values(df, line, init, gen, "p_target", seeds)
            if not len(p):
                continue
            values[line, init] = p
            sampled = lm_values(df, line, init, gen, "sampled_rate", seeds).dropna()
            who = ("student" if line == "trait" else "control student") + (", other init" if init == "other" else "")
            rows.append([f"{who} (gen {gen})", str(rate_ci(list(p))),
                         str(rate_ci(list(sampled))) if len(sampled) else "-"])
        if ("trait", "shared") in values and ("control", "shared") in values:
            x = values["trait", "shared"]
            y = values["control", "shared"].reindex(x.index).dropna()
            if len(y) >= 2:
                test = paired_test(list(x.loc[y.index]), list(y))
                lines.append(_effect_line(f"Generation {gen}, same-init student", label, x, y, test))
    return rows, "\n".join(lines)


def _lm_decay(df: pd.DataFrame) -> dict[str, dict]:
    out: dict[str, dict] = {}
    sub = df[df.line.notna() & (df.init == "shared")]
    for (gen, line), grp in sub.groupby(["generation", "line"]):
        est = rate_ci(list(grp.sort_values("seed").p_target))
        out[f"g{int(gen)}-{line}"] = {"p": est.mean, "ci95": est.ci95}
    return out
