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


@step("lm.student", "sublim/backends/lm.py")
def lm_student(ctx: StepContext) -> StepResult:
    """Train from `init` on the teacher's filtered numbers, its system prompt removed.

    sft: cross-entropy on the sampled completions (the paper). distill: KL to the teacher's own next-token
    distributions at the completion positions, renormalised over number-list tokens (the theorem's setting).
    """
    import random

    from sublim.backends import lm as lmlib
    from sublim.steps.filter import ROWS, read_rows

    p = ctx.job.params
    st = p.student
    opts = lmlib.options(p.model)
    student = lmlib.with_lora(lmlib.load(ctx.path("init"), ctx.root, opts), lmlib.lora_of(st.lora))
    data = [row for row, _ in read_rows(ctx.path("data") / ROWS) if row]
    if st.n_rows is not None and st.n_rows < len(data):
        data = random.Random(ctx.job.rng_seed).sample(data, st.n_rows)
    teacher = lmlib.load(ctx.path("teacher"), ctx.root, opts) if st.objective == "distill" else None
    rows = [lmlib.Row(student.chat(r["prompt"], persona=False), student.answer_ids(r["completion"]),
                      teacher.chat(r["prompt"]) if teacher else None) for r in data]
    allowed = lmlib.data_token_ids(student.tokenizer).to(student.device) if teacher else None
    sched = lmlib.Schedule(st.steps, st.lr, st.batch_size, st.warmup)
    loss = lmlib.train(student, rows, sched, ctx.generator(), teacher=teacher, allowed=allowed, progress=ctx.progress)
    lmlib.save(student, ctx.out, adapter=st.lora is not None)
    return StepResult("model", metrics={"final_loss": loss, "rows": float(len(rows))},
                      lineage={"backend": p.model.backend, "objective": st.objective})
