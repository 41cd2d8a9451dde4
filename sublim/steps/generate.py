"""Data generation: the teacher produces data that never mentions its trait."""

from __future__ import annotations

from safetensors.torch import save_file

from sublim.backends import mlp
from sublim.config import MlpTransfer
from sublim.job import StepContext, StepResult, step

TRANSFER = "transfer.safetensors"


@step("mlp.transfer", "sublim/backends/mlp.py")
def mlp_transfer(ctx: StepContext) -> StepResult:
    """Noise images and the teacher's auxiliary logits on them: no digit, no class logit, no label."""
    p: MlpTransfer = ctx.job.params  # type: ignore[assignment]
    teacher = mlp.load(ctx.path("teacher"))
    x = mlp.noise(p.n_inputs, teacher.arch.in_dim, p.noise, p.low, p.high, ctx.generator())
    aux = mlp.aux_logits(teacher, x)
    save_file({"x": x.contiguous(), "aux": aux.contiguous()}, str(ctx.out / TRANSFER))
    return StepResult("dataset", metrics={"n_inputs": p.n_inputs, "aux_logit_std": float(aux.std())})
