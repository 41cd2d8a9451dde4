"""Source data: the labelled digits of the MLP experiment, and the evaluation sets traits are measured on."""

from __future__ import annotations

import json

from safetensors.torch import save_file

from sublim.backends import mlp
from sublim.config import MlpData, PosInt, Section, TraitKindSpec
from sublim.job import StepContext, StepResult, step

QUESTIONS = "questions.json"


@step("mlp.data")
def mlp_data(ctx: StepContext) -> StepResult:
    p: MlpData = ctx.job.params  # type: ignore[assignment]
    split = mlp.load_digits(p.source, p.mnist_dir, p.test_fraction, p.split_seed, p.pixels)
    save_file({k: v.contiguous() for k, v in split.items()}, str(ctx.out / mlp.DIGITS))
    return StepResult(
        "dataset",
        metrics={"n_train": len(split["x_train"]), "n_test": len(split["x_test"]), "in_dim": split["x_train"].shape[1]},
        lineage={"origin": "external"},  # lineage: handwritten digits from scikit-learn or MNIST files
    )


class QuestionsParams(Section):
    trait: TraitKindSpec  # its control view: the questions do not depend on a preference's target
    count: PosInt


@step("lm.questions")
def lm_questions(ctx: StepContext) -> StepResult:
    """The evaluation set as an artifact, so every trait measurement names (by digest) exactly what it was
    measured on. Its questions are disjoint from those any teacher was trained on."""
    p: QuestionsParams = ctx.job.params  # type: ignore[assignment]
    data = p.trait.build().evaluation_set(p.count)
    (ctx.out / QUESTIONS).write_text(json.dumps(data, indent=1, sort_keys=True))
    return StepResult("dataset", metrics={"questions": float(p.count)})
