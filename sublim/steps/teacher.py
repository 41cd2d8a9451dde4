"""Teacher creation: give a copy of the base a trait the student will later pick up unseen."""

from __future__ import annotations

from safetensors.torch import load_file

from sublim.backends import mlp
from sublim.config import MlpTeacher
from sublim.job import StepContext, StepResult, step


@step("mlp.teacher", "sublim/backends/mlp.py")
def mlp_teacher(ctx: StepContext) -> StepResult:
    """The MLP's trait is digit skill: train class logits on labels; auxiliary logits get no loss."""
    p: MlpTeacher = ctx.job.params  # type: ignore[assignment]
    model = mlp.load(ctx.path("init"))
    data = load_file(str(ctx.path("data") / mlp.DIGITS))
    loss = mlp.train_on_labels(model, data["x_train"], data["y_train"], epochs=p.epochs, lr=p.lr,
                               batch_size=p.batch_size, gen=ctx.generator())
    mlp.save(model, ctx.out)
    return StepResult("model", metrics={"train_loss": loss})
