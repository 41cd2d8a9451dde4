"""Data generation: the teacher produces data that never mentions its trait."""

from __future__ import annotations

import json
import random
import time

import torch
from safetensors.torch import save_file

from sublim.backends import Progress, mlp
from sublim.config import DataKindSpec, LmGenerate, MlpTransfer, ModelSpec, Section
from sublim.job import Role, StepContext, StepResult, side_by_side, step

TRANSFER = "transfer.safetensors"
ROWS = "rows.jsonl"


@step("mlp.transfer", batch=True)
def mlp_transfer(contexts: list[StepContext]) -> list[StepResult]:
    """Noise images and each teacher's auxiliary logits on them: no digit, no class logit, no label. Each job
    draws its noise from its own generator; teachers of one architecture label theirs as one stack."""
    p: MlpTransfer = contexts[0].job.params  # type: ignore[assignment]
    teachers = [mlp.load(ctx.path(Role.TEACHER)) for ctx in contexts]
    results: list[StepResult] = [StepResult("dataset")] * len(contexts)

    def label(group: list[int], progress: Progress) -> None:
        arch = teachers[group[0]].arch
        x = torch.stack([mlp.noise(p.n_inputs, arch.in_dim, p.noise, p.low, p.high, contexts[i].generator())
                         for i in group])
        aux = mlp.stack_outputs(mlp.Stack.of([teachers[i] for i in group]), x)[..., mlp.N_CLASSES:]
        for j, i in enumerate(group):
            save_file({"x": x[j].contiguous(), "aux": aux[j].contiguous()}, str(contexts[i].out / TRANSFER))
            results[i] = StepResult("dataset", metrics={"n_inputs": p.n_inputs, "aux_logit_std": float(aux[j].std())})

    lanes = contexts[0].lanes
    stacks = mlp.cut([t.arch for t in teachers], min(mlp.CHUNK, p.n_inputs), lanes)
    side_by_side(label, stacks, lanes, contexts[0].progress)
    return results


class GenerateParams(Section):
    model: ModelSpec
    data: DataKindSpec
    generate: LmGenerate


@step("lm.generate")
def lm_generate(ctx: StepContext) -> StepResult:
    """The data kind's prompts, answered by the teacher (with its persona, if any) at the set temperature, in
    batches. Each row keeps the prompt, the completion, the teacher's digest and the task (what the filter
    needs to judge the answer)."""
    p: GenerateParams = ctx.job.params  # type: ignore[assignment]
    backend, kind, g = p.model.build(), p.data.build(), p.generate
    teacher = backend.load(ctx.path(Role.TEACHER), ctx.root)
    rng = random.Random(ctx.job.rng_seed)
    tasks = [kind.task(rng) for _ in range(g.n_prompts)]
    start = time.perf_counter()
    completions = backend.generate(teacher, [teacher.chat(t.prompt) for t in tasks],
                                   max_new_tokens=p.data.max_new_tokens, temperature=g.temperature,
                                   batch_size=g.batch_size, seed=ctx.job.rng_seed, progress=ctx.progress)
    seconds = time.perf_counter() - start
    teacher_digest = ctx.digest(Role.TEACHER)
    with open(ctx.out / ROWS, "w", encoding="utf-8") as fh:
        for task, completion in zip(tasks, completions):
            fh.write(json.dumps({"prompt": task.prompt, "completion": completion, "teacher": teacher_digest,
                                 "task": task.meta}) + "\n")
    tokens = sum(len(teacher.tokenizer.encode(c, add_special_tokens=False)) for c in completions)
    return StepResult("dataset", metrics={"rows": float(len(tasks)), "tokens_per_s": tokens / max(seconds, 1e-9),
                                          "seconds": seconds})


class AnswerParams(Section):
    model: ModelSpec
    data: DataKindSpec
    words: list[str]  # kept rows name none of these (as the filter requires)
    numbers: list[int]
    generate: LmGenerate
    rows: int  # at most this many of the source's prompts


@step("lm.answer")
def lm_answer(ctx: StepContext) -> StepResult:
    """A model's own answers to another dataset's prompts, kept by the same rules as the filter's: the matched
    control a screen compares a dataset against when no control teacher is known (the base answering)."""
    from sublim.steps.filter import forbidden_for, read_rows, verdict

    p: AnswerParams = ctx.job.params  # type: ignore[assignment]
    backend, kind = p.model.build(), p.data.build()
    model = backend.load(ctx.path(Role.TEACHER), ctx.root)
    source = [row for row, _ in read_rows(ctx.path(Role.SOURCE) / ROWS) if row][: p.rows]
    completions = backend.generate(model, [model.chat(r["prompt"]) for r in source],
                                   max_new_tokens=p.data.max_new_tokens, temperature=p.generate.temperature,
                                   batch_size=p.generate.batch_size, seed=ctx.job.rng_seed, progress=ctx.progress)
    forbidden, kept = forbidden_for(p.data, p.words, p.numbers), []
    for row, completion in zip(source, completions):
        answer = {"prompt": row["prompt"], "completion": completion, "task": row.get("task") or {}}
        found = verdict(answer, kind, forbidden)
        if found.ok:
            kept.append({**answer, "completion": found.completion, "teacher": ctx.digest(Role.TEACHER)})
    if not kept:
        raise ValueError(f"{ctx.job.input(Role.TEACHER)} answered none of {len(source)} prompts of "
                         f"{ctx.job.input(Role.SOURCE)} in a form the filter keeps")
    with open(ctx.out / ROWS, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
    return StepResult("dataset", metrics={"rows": float(len(source)), "kept": float(len(kept))})
