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
