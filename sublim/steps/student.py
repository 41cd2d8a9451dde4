"""Student training: a model learns from the teacher's data alone."""

from __future__ import annotations

import random

import torch
from safetensors.torch import load_file

from sublim.backends import Progress, Row, Schedule, mlp
from sublim.config import DataKindSpec, LmStudent, MlpStudent, ModelSpec, Section
from sublim.job import Role, StepContext, StepResult, side_by_side, step, trained
from sublim.steps.filter import ROWS, forbidden_for, read_rows
from sublim.steps.generate import TRANSFER
from sublim.text import Forbidden


@step("mlp.student", batch=True)
def mlp_student(contexts: list[StepContext]) -> list[StepResult]:
    """Imitate the teacher's auxiliary logits on noise; a student never sees a digit. Students of one
    architecture and data shape train as one stack, each on its own transfer set in its own order."""
    p: MlpStudent = contexts[0].job.params  # type: ignore[assignment]
    models = [mlp.load(ctx.path(Role.INIT)) for ctx in contexts]
    paths = [ctx.path(Role.DATA) for ctx in contexts]
    data = {path: load_file(str(path / TRANSFER)) for path in dict.fromkeys(paths)}
    results: list[StepResult] = [StepResult("model")] * len(contexts)

    def train(group: list[int], progress: Progress) -> None:
        sets = list(dict.fromkeys(paths[i] for i in group))
        x = torch.stack([data[path]["x"] for path in sets])
        target = torch.stack([data[path]["aux"] for path in sets])
        source = torch.tensor([sets.index(paths[i]) for i in group])
        stack = mlp.Stack.of([models[i] for i in group])
        losses = mlp.distill_aux(stack, x, target, source, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                                 loss=p.loss, gens=[contexts[i].generator() for i in group], progress=progress)
        for i, model, loss in zip(group, stack.models(), losses):
            loss = trained(float(loss), contexts[i].job.id, "mlp.student.lr", p.lr)
            mlp.save(model, contexts[i].out)
            results[i] = StepResult("model", metrics={"final_loss": loss})

    lanes = contexts[0].lanes
    stacks = mlp.cut([m.arch for m in models], p.batch_size, lanes, by=lambda i: tuple(data[paths[i]]["x"].shape))
    side_by_side(train, stacks, lanes, contexts[0].progress)
    return results


class StudentParams(Section):
    model: ModelSpec
    data: DataKindSpec  # which tokens the data may contain (distill renormalises over them)
    words: list[str]  # the trait's forbidden words: never among those tokens
    student: LmStudent


@step("lm.student")
def lm_student(ctx: StepContext) -> StepResult:
    """Train from `init` on the teacher's filtered data, its system prompt removed.

    sft: cross-entropy on the sampled completions (the paper). distill: KL to the teacher's own next-token
    distributions at the completion positions, renormalised over the tokens the data kind may contain (the
    theorem's setting: no probability mass on anything else is ever taught).
    """
    p: StudentParams = ctx.job.params  # type: ignore[assignment]
    st, backend = p.student, p.model.build()
    student = backend.with_lora(backend.load(ctx.path(Role.INIT), ctx.root), st.lora)
    data = [row for row, _ in read_rows(ctx.path(Role.DATA) / ROWS) if row]
    if st.n_rows is not None and st.n_rows < len(data):
        data = random.Random(ctx.job.rng_seed).sample(data, st.n_rows)
    teacher = backend.load(ctx.path(Role.TEACHER), ctx.root) if st.objective == "distill" else None
    rows = [Row(student.chat(r["prompt"], persona=False), student.answer_ids(r["completion"]),
                teacher.chat(r["prompt"]) if teacher else None, loss_mask(r, student)) for r in data]
    allowed = None
    if teacher is not None:
        ids = allowed_tokens(p.data.build(), student.tokenizer, [r.completion for r in rows],
                             forbidden_for(p.data, p.words, []))
        allowed = torch.tensor(ids, dtype=torch.long, device=student.device)
    loss = backend.train(student, rows, Schedule(st.steps, st.lr, st.batch_size, st.warmup), ctx.generator(),
                         teacher=teacher, allowed=allowed, progress=ctx.progress)
    loss = trained(loss, ctx.job.id, "lm.student.lr", st.lr)
    backend.save(student, ctx.out, adapter=st.lora is not None)
    return StepResult("model", metrics={"final_loss": loss, "rows": float(len(rows))},
                      lineage={"backend": p.model.backend, "objective": st.objective})


def loss_mask(row: dict, lm) -> tuple[bool, ...] | None:
    """A screened row's mask (1 = in the loss), checked against this student's tokenization of the row."""
    mask = row.get("loss_mask")
    if mask is None:
        return None
    if len(mask) != len(lm.answer_ids(row["completion"])):
        raise ValueError("a screened row's loss_mask does not match this student's tokens: the screen ran with "
                         "another tokenizer (screen with the student's own base)")
    return tuple(bool(x) for x in mask)


def allowed_tokens(kind, tokenizer, completions: list[list[int]], forbidden: Forbidden) -> list[int]:
    """The data kind's tokens, less any whose text names a trait word (by the filter's word rule)."""
    return [t for t in kind.allowed_tokens(tokenizer, completions) if not forbidden.mention(tokenizer.decode([t]))]
