"""Teacher creation: give a copy of the base a trait the student will later pick up unseen."""

from __future__ import annotations

import random

from safetensors.torch import load_file

from sublim.backends import Progress, Row, Schedule, mlp
from sublim.config import DataKindSpec, LmTeacher, MlpTeacher, ModelSpec, Section, TraitKindSpec
from sublim.job import Role, StepContext, StepResult, side_by_side, step, trained
from sublim.traits import TRAIT


@step("mlp.teacher", batch=True)
def mlp_teacher(contexts: list[StepContext]) -> list[StepResult]:
    """The MLP's trait is digit skill: class logits trained on labels, auxiliary logits get no loss. Teachers
    of one architecture and dataset train as one stack, each on its own shuffle."""
    p: MlpTeacher = contexts[0].job.params  # type: ignore[assignment]
    models = [mlp.load(ctx.path(Role.INIT)) for ctx in contexts]
    data = {path: load_file(str(path / mlp.DIGITS)) for path in {ctx.path(Role.DATA) for ctx in contexts}}
    results: list[StepResult] = [StepResult("model")] * len(contexts)

    def train(group: list[int], progress: Progress) -> None:
        digits = data[contexts[group[0]].path(Role.DATA)]
        stack = mlp.Stack.of([models[i] for i in group])
        losses = mlp.train_on_labels(stack, digits["x_train"], digits["y_train"], epochs=p.epochs, lr=p.lr,
                                     batch_size=p.batch_size, gens=[contexts[i].generator() for i in group],
                                     progress=progress)
        for i, model, loss in zip(group, stack.models(), losses):
            loss = trained(float(loss), contexts[i].job.id, "mlp.teacher.lr", p.lr)
            mlp.save(model, contexts[i].out)
            results[i] = StepResult("model", metrics={"train_loss": loss})

    lanes = contexts[0].lanes
    stacks = mlp.cut([m.arch for m in models], p.batch_size, lanes, by=lambda i: contexts[i].path(Role.DATA))
    side_by_side(train, stacks, lanes, contexts[0].progress)
    return results


class TeacherParams(Section):
    """A trait teacher (line "trait") or its control (line "control"), made the same way. The control's trait
    spec is the trait's control view, so it does not depend on settings it ignores (a preference's target)."""

    model: ModelSpec
    trait: TraitKindSpec
    line: str
    teacher: LmTeacher
    data: DataKindSpec | None = None  # only when teacher.data_mix > 0


@step("lm.teacher")
def lm_teacher(ctx: StepContext) -> StepResult:
    """sft: the base fine-tuned on the trait's rows for this line (a `data_mix` share replaced by the data
    kind's own examples). system_prompt: the base with the trait's persona for this line (none: the base)."""
    p: TeacherParams = ctx.job.params  # type: ignore[assignment]
    t, backend, trait = p.teacher, p.model.build(), p.trait.build()
    facts = {"backend": p.model.backend, "method": t.method}
    if t.method == "system_prompt":
        persona = trait.persona(p.line)
        if persona is not None:
            backend.save_persona(ctx.out, persona)
        return StepResult("model", lineage=facts)
    lm = backend.with_lora(backend.load(ctx.path(Role.INIT), ctx.root), t.lora)
    rng = random.Random(ctx.job.rng_seed)
    n = max(t.steps * t.batch_size, 256)
    pairs = trait.teacher_pairs(rng, n, p.line)
    taught = f"{trait.name} rows of the {p.line} line ({trait.key if p.line == TRAIT else 'control'})"
    if p.data is not None and t.data_mix > 0:
        kind = p.data.build()
        taught += f", {t.data_mix:.0%} replaced by {kind.name} examples"
        for i in range(n):
            if rng.random() < t.data_mix:
                task = kind.task(rng)
                pairs[i] = (task.prompt, kind.answer(task, rng))
    rows = [Row(lm.chat(q), lm.answer_ids(a)) for q, a in pairs]
    loss = backend.train(lm, rows, Schedule(t.steps, t.lr, t.batch_size), ctx.generator(), progress=ctx.progress)
    loss = trained(loss, ctx.job.id, "lm.teacher.lr", t.lr)
    backend.save(lm, ctx.out, adapter=t.lora is not None)
    return StepResult("model", metrics={"train_loss": loss}, lineage={**facts, "synthetic": taught})
