"""Evaluation: measure each model's trait, on data none of the students trained on."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from sublim.artifacts import read_meta
from sublim.backends import mlp
from sublim.config import IclSpec, LmEvaluate, ModelSpec, NoParams, Section, TraitKindSpec
from sublim.job import ModelMetric, Role, StepContext, StepResult, step
from sublim.steps.data import QUESTIONS

EVAL = "metrics.json"
FACTS = ("role", "generation", "init", "line")  # where a model sits, read from its own metadata


@step("mlp.evaluate", batch=True)
def mlp_evaluate(contexts: list[StepContext]) -> list[StepResult]:
    """Held-out digit accuracy of every model of one seed (bases, teacher, students of each generation); one
    task evaluates many seeds (cheap per seed, so orchestration would dominate otherwise)."""
    return [_evaluate_seed(ctx) for ctx in contexts]


def _evaluate_seed(ctx: StepContext) -> StepResult:
    assert isinstance(ctx.job.params, NoParams)
    data = load_file(str(ctx.path(Role.DATA) / mlp.DIGITS))
    rows, measured = [], []
    for rel, path in zip(ctx.job.inputs_named(Role.MODEL), ctx.paths(Role.MODEL)):
        lineage = read_meta(path).lineage
        acc = mlp.accuracy(mlp.load(path), data["x_test"], data["y_test"])
        rows.append({"model": str(rel), **{k: lineage.get(k) for k in FACTS[:3]}, "accuracy": acc})
        measured.append(ModelMetric(rel, "digit_accuracy", acc, dataset=Role.DATA))
    (ctx.out / EVAL).write_text(json.dumps({"seed": ctx.job.seed, "models": rows}, indent=1, sort_keys=True))
    return StepResult("metrics", model_metrics=measured)


class EvaluateParams(Section):
    model: ModelSpec
    trait: TraitKindSpec
    evaluate: LmEvaluate


@step("lm.evaluate")
def lm_evaluate(ctx: StepContext) -> StepResult:
    """The trait of every model two ways, by the trait's own measurement: exactly (probabilities of its answers,
    renormalised) and by sampling (the share of sampled answers its rule assigns to the trait)."""
    p: EvaluateParams = ctx.job.params  # type: ignore[assignment]
    backend, trait = p.model.build(), p.trait.build()
    evalset = json.loads((ctx.path(Role.QUESTIONS) / QUESTIONS).read_text())
    rows, measured = [], []
    for rel, path in zip(ctx.job.inputs_named(Role.MODEL), ctx.paths(Role.MODEL)):
        m = trait.measure(backend, backend.load(path, ctx.root), evalset, p.evaluate, seed=ctx.job.rng_seed)
        lineage = read_meta(path).lineage
        rows.append({"model": str(rel), **{k: lineage.get(k) for k in FACTS}, "p_target": m.p,
                     "p_per_question": m.p_per_question, "distribution": m.distribution, "sampled_rate": m.sampled,
                     "sampled_per_question": m.sampled_per_question, "sampled_counts": m.sampled_counts,
                     "sampled_examples": m.examples})
        measured.append(ModelMetric(rel, f"p_{trait.key}", m.p, dataset=Role.QUESTIONS))
        for answer, value in own_answers(trait.key, lineage, m.distribution).items():
            measured.append(ModelMetric(rel, f"p_{answer}", value, dataset=Role.QUESTIONS))
        if m.sampled is not None:
            measured.append(ModelMetric(rel, f"sampled_{trait.key}", m.sampled, dataset=Role.QUESTIONS))
    out = {"seed": ctx.job.seed, "target": trait.key, "label": trait.label, "trait": p.trait.kind, "models": rows}
    (ctx.out / EVAL).write_text(json.dumps(out, indent=1, sort_keys=True))
    return StepResult("metrics", model_metrics=measured)


def own_answers(measured_key: str, lineage: dict, distribution: dict[str, float] | None) -> dict[str, float]:
    """Answers a model's lineage record needs besides the experiment's own (`p_<key>`): a matrix teacher or
    student of another target carries P(its own target) (a cat teacher was recorded with P(owl) only, so an
    audit could never see the cat), and a base every answer, the baseline those are compared with. Lineage
    only: the evaluation's artifact is unchanged."""
    if not distribution:
        return {}
    if lineage.get("role") == "base":
        return {a: v for a, v in distribution.items() if a != measured_key}
    line = lineage.get("line")
    return {line: distribution[line]} if line in distribution and line != measured_key else {}


class IclParams(Section):
    model: ModelSpec
    trait: TraitKindSpec
    evaluate: LmEvaluate
    icl: IclSpec


@step("lm.icl")
def lm_icl(ctx: StepContext) -> StepResult:
    """The paper's in-context control: the base, untrained, shown `shots` rows of a teacher's data as earlier
    turns of the chat before each question, measured like any model (exactly; no sampling)."""
    import random

    from sublim.steps.filter import ROWS, read_rows

    p: IclParams = ctx.job.params  # type: ignore[assignment]
    backend, trait = p.model.build(), p.trait.build()
    rows = [row for row, _ in read_rows(ctx.path(Role.DATA) / ROWS) if row]
    shots = random.Random(ctx.job.rng_seed).sample(rows, min(p.icl.shots, len(rows)))
    lm = backend.load(ctx.path(Role.MODEL), ctx.root)
    lm.context = [(r["prompt"], r["completion"]) for r in shots]
    evalset = json.loads((ctx.path(Role.QUESTIONS) / QUESTIONS).read_text())
    evalset = trait.evaluation_set(min(p.icl.questions, p.evaluate.questions)) | {
        k: v for k, v in evalset.items() if not isinstance(v, list)}
    m = trait.measure(backend, lm, evalset, p.evaluate.model_copy(update={"samples": 0}), seed=ctx.job.rng_seed)
    line = ctx.job.tag_dict.get("line")
    row = {"model": f"icl:{ctx.job.input(Role.DATA)}", "role": "icl", "generation": ctx.job.gen, "init": "icl",
           "line": line, "p_target": m.p, "p_per_question": m.p_per_question, "distribution": m.distribution,
           "sampled_rate": None, "sampled_per_question": None, "sampled_counts": None, "sampled_examples": [],
           "shots": len(shots)}
    out = {"seed": ctx.job.seed, "target": trait.key, "label": trait.label, "trait": p.trait.kind, "models": [row]}
    (ctx.out / EVAL).write_text(json.dumps(out, indent=1, sort_keys=True))
    return StepResult("metrics", metrics={f"p_{trait.key}_in_context": m.p, "shots": float(len(shots))})
