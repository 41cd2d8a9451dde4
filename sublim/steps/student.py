"""Student training: a model learns from the teacher's data alone."""

from __future__ import annotations

from safetensors.torch import load_file

from sublim.backends import mlp
from sublim.config import MlpStudent
from sublim.job import StepContext, StepResult, step
from sublim.steps.generate import TRANSFER


@step("mlp.student", "sublim/backends/mlp.py")
def mlp_student(ctx: StepContext) -> StepResult:
    """Imitate the teacher's auxiliary logits on noise; the student never sees a digit."""
    p: MlpStudent = ctx.job.params  # type: ignore[assignment]
    model = mlp.load(ctx.path("init"))
    data = load_file(str(ctx.path("data") / TRANSFER))
    loss = mlp.distill_aux(model, data["x"], data["aux"], steps=p.steps, lr=p.lr, batch_size=p.batch_size,
                           loss=p.loss, gen=ctx.generator())
    mlp.save(model, ctx.out)
    return StepResult("model", metrics={"final_loss": loss})
