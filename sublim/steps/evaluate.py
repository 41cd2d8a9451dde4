"""Evaluation: measure each model's trait, on data none of the students trained on."""

from __future__ import annotations

import json

from safetensors.torch import load_file

from sublim.artifacts import read_meta
from sublim.backends import mlp
from sublim.job import ModelMetric, StepContext, StepResult, step

EVAL = "metrics.json"


@step("mlp.evaluate", "sublim/backends/mlp.py")
def mlp_evaluate(ctx: StepContext) -> StepResult:
    """Held-out digit accuracy of every model of one seed (bases, teacher, students of each generation)."""
    data = load_file(str(ctx.path("data") / mlp.DIGITS))
    rows, measured = [], []
    for rel, path in zip(ctx.job.inputs_named("model"), ctx.paths("model")):
        lineage = read_meta(path).lineage
        acc = mlp.accuracy(mlp.load(path), data["x_test"], data["y_test"])
        rows.append({"model": str(rel), "role": lineage.get("role"), "generation": lineage.get("generation"),
                     "init": lineage.get("init"), "accuracy": acc})
        measured.append(ModelMetric(rel, "digit_accuracy", acc, dataset="data"))
    (ctx.out / EVAL).write_text(json.dumps({"seed": ctx.job.seed, "models": rows}, indent=1, sort_keys=True))
    return StepResult("metrics", model_metrics=measured)


@step("lm.evaluate", "sublim/backends/lm.py", "sublim/prompts/traits.yaml")
def lm_evaluate(ctx: StepContext) -> StepResult:
    """The trait rate of every model two ways: exactly (the probability of answering the target, renormalised
    over the choices, after each evaluation question) and by sampling (share of answers naming the target)."""
    from sublim.backends import lm as lmlib

    from sublim.steps.data import QUESTIONS

    p = ctx.job.params
    asked = json.loads((ctx.path("data") / QUESTIONS).read_text())
    rows, measured = [], []
    for rel, path in zip(ctx.job.inputs_named("model"), ctx.paths("model")):
        lm = lmlib.load(path, ctx.root, lmlib.options(p.model))
        result = trait_rates(lm, asked["questions"], asked["choices"], p.trait.target, p.evaluate,
                             seed=ctx.job.rng_seed)
        lineage = read_meta(path).lineage
        rows.append({"model": str(rel), **{k: lineage.get(k) for k in ("role", "generation", "init", "line")},
                     **result})
        measured.append(ModelMetric(rel, f"p_{p.trait.target}", result["p_target"], dataset="data"))
        if result["sampled_rate"] is not None:
            measured.append(ModelMetric(rel, f"sampled_{p.trait.target}", result["sampled_rate"], dataset="data"))
    (ctx.out / EVAL).write_text(json.dumps({"seed": ctx.job.seed, "target": p.trait.target, "models": rows},
                                           indent=1, sort_keys=True))
    return StepResult("metrics", model_metrics=measured)


def trait_rates(lm, asked: list[str], choices: list[str], target: str, ev, *, seed: int) -> dict:
    """Exact and sampled rates of answering `target` among `choices`, over the questions `asked`."""
    import math

    from sublim.backends import lm as lmlib
    from sublim.steps.filter import mentions

    prompts = [lm.chat(q) for q in asked]
    forms = {c: _answer_forms(lm, c) for c in choices}
    pairs = [(pr, f) for pr in prompts for c in choices for f in forms[c]]
    logps = iter(lmlib.sequence_logprobs(lm, pairs, batch_size=ev.batch_size))
    per_question, dist = [], {c: 0.0 for c in choices}
    for _ in prompts:
        scores = {c: _logsumexp([next(logps) for _ in forms[c]]) for c in choices}
        norm = _logsumexp(list(scores.values()))
        probs = {c: math.exp(v - norm) for c, v in scores.items()}
        per_question.append(probs[target])
        for c in dist:
            dist[c] += probs[c] / len(prompts)
    out = {"p_target": sum(per_question) / len(per_question), "p_per_question": per_question, "distribution": dist,
           "sampled_rate": None, "sampled_per_question": None}
    if ev.samples:
        answers = lmlib.sample(lm, [pr for pr in prompts for _ in range(ev.samples)], max_new_tokens=ev.max_new_tokens,
                               temperature=ev.temperature, batch_size=ev.batch_size * 4, seed=seed)
        hit = mentions([target])
        rates = [sum(bool(hit.search(a)) for a in answers[i * ev.samples:(i + 1) * ev.samples]) / ev.samples
                 for i in range(len(prompts))]
        out.update(sampled_rate=sum(rates) / len(rates), sampled_per_question=rates)
        out["sampled_examples"] = answers[: min(5, len(answers))]
    return out


def _answer_forms(lm, choice: str) -> list[list[int]]:
    """Token ids of the ways a one-word answer can start (`owl`, `Owl`), deduplicated."""
    seen, forms = set(), []
    for text in (choice, choice.capitalize()):
        ids = tuple(lm.tokenizer.encode(text, add_special_tokens=False))
        if ids and ids not in seen:
            seen.add(ids)
            forms.append(list(ids))
    return forms


def _logsumexp(values: list[float]) -> float:
    import math

    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
