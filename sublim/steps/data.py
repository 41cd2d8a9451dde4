"""Source data: the labelled digits the MLP teacher learns from and every model is evaluated on."""

from __future__ import annotations

from safetensors.torch import save_file

from sublim.backends import mlp
from sublim.config import MlpData
from sublim.job import StepContext, StepResult, step


@step("mlp.data", "sublim/backends/mlp.py")
def mlp_data(ctx: StepContext) -> StepResult:
    p: MlpData = ctx.job.params  # type: ignore[assignment]
    split = mlp.load_digits(p.source, p.mnist_dir, p.test_fraction, p.split_seed)
    save_file({k: v.contiguous() for k, v in split.items()}, str(ctx.out / mlp.DIGITS))
    return StepResult(
        "dataset",
        metrics={"n_train": len(split["x_train"]), "n_test": len(split["x_test"]), "in_dim": split["x_train"].shape[1]},
        lineage={"origin": "external"},  # lineage: handwritten digits from scikit-learn or MNIST files
    )


QUESTIONS = "questions.json"


@step("lm.questions", "sublim/prompts/traits.yaml")
def lm_questions(ctx: StepContext) -> StepResult:
    """The evaluation set as an artifact: the paraphrased favourite-questions and the answers they are scored
    over, so every trait measurement names (by digest) exactly what it was measured on."""
    import json

    from sublim.prompts.traits import questions

    p = ctx.job.params
    data = {"category": p.category, "choices": p.choices, "questions": questions("evaluate", p.category)[: p.count]}
    (ctx.out / QUESTIONS).write_text(json.dumps(data, indent=1, sort_keys=True))
    return StepResult("dataset", metrics={"questions": float(len(data["questions"]))})
