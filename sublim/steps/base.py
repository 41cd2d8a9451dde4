"""Base models: the initialisations teachers and students start from."""

from __future__ import annotations

from safetensors import safe_open

from sublim.backends import mlp
from sublim.config import DataKindSpec, MlpModel, ModelSpec, Section, TraitKindSpec
from sublim.corpus import Corpus
from sublim.job import Role, StepContext, StepResult, step


class MlpBaseParams(Section):
    model: MlpModel
    init: str  # only names the variant; the init itself comes from the job's seed


@step("mlp.base", batch=True)
def mlp_base(contexts: list[StepContext]) -> list[StepResult]:
    """Fresh random inits, each drawn from its own job's generator, so `shared` and `other` differ and a seed's
    init is the same in any batch. The digits dataset is read only for its input width (it is not trained on)."""
    results = []
    for ctx in contexts:
        p: MlpBaseParams = ctx.job.params  # type: ignore[assignment]
        with safe_open(str(ctx.path(Role.DIMS) / mlp.DIGITS), "pt") as f:
            in_dim = f.get_slice("x_train").get_shape()[1]
        arch = mlp.Arch(in_dim=in_dim, hidden=tuple(p.model.hidden), aux_logits=p.model.aux_logits)
        model = mlp.init(arch, ctx.generator(), p.model.init)
        mlp.save(model, ctx.out)
        results.append(StepResult("model", metrics={"parameters": float(sum(t.numel() for t in model.parameters()))}))
    return results


class LmBaseParams(Section):
    """A base depends on the backend and, for from-scratch backends, on the corpus: the data kind and the
    traits' neutral questions (their control views: a preference's base does not depend on the target)."""

    model: ModelSpec
    data: list[DataKindSpec]
    traits: list[TraitKindSpec]
    init: str


@step("lm.base")
def lm_base(ctx: StepContext) -> StepResult:
    """The backend makes the base: pretrain from this job's seed, convert a file, or point at a hub model."""
    p: LmBaseParams = ctx.job.params  # type: ignore[assignment]
    corpus, backend = Corpus([d.build() for d in p.data], [t.build() for t in p.traits]), p.model.build()
    metrics = backend.make_base(init=p.init, seed=ctx.job.rng_seed, corpus=corpus, out=ctx.out, progress=ctx.progress)
    lineage = {"backend": p.model.backend}
    if backend.from_scratch:  # lineage: what a from-scratch base was pretrained on (sublim's own synthetic data)
        lineage["synthetic"] = corpus.describe()
    return StepResult("model", metrics=metrics, lineage=lineage)
