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
    )
