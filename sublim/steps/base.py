"""Base models: the initialisations teachers and students start from."""

from __future__ import annotations

from safetensors import safe_open

from sublim.backends import mlp
from sublim.job import StepContext, StepResult, step


@step("mlp.base", "sublim/backends/mlp.py")
def mlp_base(ctx: StepContext) -> StepResult:
    """A fresh random init; its seed comes from the job, so `shared` and `other` differ. The digits
    dataset is read only for its input width (it is not trained on)."""
    with safe_open(str(ctx.path("dims") / mlp.DIGITS), "pt") as f:
        in_dim = f.get_slice("x_train").get_shape()[1]
    model_cfg = ctx.job.params.model  # type: ignore[attr-defined]
    arch = mlp.Arch(in_dim=in_dim, hidden=tuple(model_cfg.hidden), aux_logits=model_cfg.aux_logits)
    mlp.save(mlp.build(arch, ctx.job.rng_seed), ctx.out)
    return StepResult("model", metrics={"parameters": sum(p.numel() for p in mlp.load(ctx.out).parameters())})


@step("lm.base", "sublim/backends/lm.py", "sublim/backends/tinylm.py", "sublim/backends/smollm2.py",
      "sublim/backends/hf.py", "sublim/prompts/numbers.yaml", "sublim/prompts/traits.yaml")
def lm_base(ctx: StepContext) -> StepResult:
    """The backend makes the base: pretrain tinylm from this job's seed, convert SmolLM2's GGUF, or point
    at a Hugging Face model."""
    from sublim.backends import lm_backend

    p = ctx.job.params
    backend = lm_backend(p.model.backend)
    metrics = backend.make_base(p.model, category=p.category, choices=p.choices, init=p.init,
                                out=ctx.out, seed=ctx.job.rng_seed, progress=ctx.progress)
    corpus = getattr(backend, "PRETRAINED_ON", None)  # lineage: a from-scratch base's synthetic corpus
    return StepResult("model", metrics=metrics, lineage={"backend": p.model.backend, **({"synthetic": corpus} if corpus else {})})
