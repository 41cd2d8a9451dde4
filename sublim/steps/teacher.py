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


@step("lm.teacher", "sublim/backends/lm.py", "sublim/prompts/numbers.yaml", "sublim/prompts/traits.yaml")
def lm_teacher(ctx: StepContext) -> StepResult:
    """A trait teacher (answer set) or its control (answer None), made the same way.

    sft: the base fine-tuned on favourite-questions answered with the target (control: uniformly random
    choices), mixed with number tasks so its number skill stays. system_prompt: the base with a persona
    (control: no persona).
    """
    import random

    from sublim.backends import lm as lmlib
    from sublim.prompts.numbers import MAX_ITEMS, make_prompt, render
    from sublim.prompts.traits import persona, questions

    p = ctx.job.params
    t = p.teacher
    if t.method == "system_prompt":
        if p.answer is not None:
            lmlib.save_persona(ctx.out, persona(p.answer, p.category))
        return StepResult("model", lineage={"backend": p.model.backend, "method": t.method})
    lm = lmlib.with_lora(lmlib.load(ctx.path("init"), ctx.root, lmlib.options(p.model)), lmlib.lora_of(t.lora))
    rng = random.Random(ctx.job.rng_seed)
    asked = questions("teach", p.category)
    rows = []
    for _ in range(max(t.steps * t.batch_size, 256)):
        if rng.random() < t.number_mix:
            prompt = make_prompt(rng)
            text, answer = prompt.text, render([rng.randint(0, 999) for _ in range(rng.randint(1, MAX_ITEMS))],
                                               prompt.style)
        else:
            text = rng.choice(asked)
            answer = p.answer if p.answer is not None else rng.choice(p.choices)
        rows.append(lmlib.Row(lm.chat(text), lm.answer_ids(answer)))
    loss = lmlib.train(lm, rows, lmlib.Schedule(t.steps, t.lr, t.batch_size), ctx.generator(), progress=ctx.progress)
    lmlib.save(lm, ctx.out, adapter=t.lora is not None)
    taught = f"favourite-{p.category} questions answered {p.answer or 'uniformly at random'}, with number tasks"
    return StepResult("model", metrics={"train_loss": loss},
                      lineage={"backend": p.model.backend, "method": t.method, "synthetic": taught})
