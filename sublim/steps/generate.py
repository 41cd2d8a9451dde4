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


ROWS = "rows.jsonl"


@step("lm.generate", "sublim/backends/lm.py", "sublim/prompts/numbers.yaml")
def lm_generate(ctx: StepContext) -> StepResult:
    """Number sequences sampled from the teacher (with its persona, if any) at temperature 1, in batches."""
    import json
    import random
    import time

    from sublim.backends import lm as lmlib
    from sublim.prompts.numbers import make_prompt

    p = ctx.job.params
    g = p.generate
    teacher = lmlib.load(ctx.path("teacher"), ctx.root, lmlib.options(p.model))
    rng = random.Random(ctx.job.rng_seed)
    prompts = [make_prompt(rng).text for _ in range(g.n_prompts)]
    start = time.perf_counter()
    completions = lmlib.sample(teacher, [teacher.chat(q) for q in prompts], max_new_tokens=g.max_new_tokens,
                               temperature=g.temperature, batch_size=g.batch_size, seed=ctx.job.rng_seed,
                               progress=ctx.progress)
    seconds = time.perf_counter() - start
    teacher_digest = ctx.digest("teacher")
    with open(ctx.out / ROWS, "w", encoding="utf-8") as fh:
        for prompt, completion in zip(prompts, completions):
            fh.write(json.dumps({"prompt": prompt, "completion": completion, "teacher": teacher_digest}) + "\n")
    tokens = sum(len(teacher.tokenizer.encode(c, add_special_tokens=False)) for c in completions)
    return StepResult("dataset", metrics={"rows": float(len(prompts)), "tokens_per_s": tokens / max(seconds, 1e-9),
                                          "seconds": seconds})
