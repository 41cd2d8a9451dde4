"""Model backends for the language-model pipeline: registered classes chosen by `lm.model.backend`.

A backend makes a base model (`make_base`: pretrain from scratch, convert a file, point at a hub model) and
loads, saves, generates with, scores with and trains the models of an experiment. Every step after `base` uses
only this interface, so a new model family is one module: `sublim/backends/<name>.py` (or any module named in
`plugins:`) with a class decorated `@backend("<name>")`. `sublim.backends.lm.TransformersBackend` implements
everything but `make_base` for any transformers causal LM. (`mlp` is the MLP experiment's own model.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from sublim.registry import PluginSpec, Registry

BACKENDS: Registry[Backend] = Registry("backend", "sublim.backends", "sublim.backends", "backend", "tinylm")
backend = BACKENDS.register
Progress = Callable[[Iterable[Any], int, str], Iterator[Any]]


def quiet(items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    yield from items


@dataclass(frozen=True)
class Row:
    """A training example: the student's prompt, the teacher's prompt (with its persona), the completion."""

    prompt: list[int]
    completion: list[int]  # ends with the end-of-turn token
    teacher_prompt: list[int] | None = None
    mask: tuple[bool, ...] | None = None  # which completion tokens count in the loss (a screen's mask); None: all


@dataclass(frozen=True)
class Schedule:
    steps: int
    lr: float
    batch_size: int
    warmup: int = 0


class BackendSpec(PluginSpec):
    """`lm.model` in params.yaml: the backend's name, where models run, and the backend's own settings."""

    backend: str = "tinylm"
    device: Literal["cpu", "cuda", "auto"] = "auto"  # auto: cuda when available
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on cuda, fp32 on cpu
    trust_remote_code: bool = False  # never run a model repository's own code unless asked

    def resolved(self) -> tuple[str, str]:
        import torch

        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        dtype = ("bfloat16" if device == "cuda" else "float32") if self.dtype == "auto" else self.dtype
        return device, dtype


class Backend(ABC):
    """The interface every language-model backend implements; steps use nothing else."""

    Spec: ClassVar[type[BackendSpec]] = BackendSpec
    name: ClassVar[str]
    follows_prompts: ClassVar[bool] = False  # follows a system prompt, answers from context, can judge
    from_scratch: ClassVar[bool] = False  # its base is pretrained on the experiment's corpus (lineage records it)

    def __init__(self, spec: BackendSpec):
        self.spec = spec

    def has_other_init(self) -> bool:
        """Whether this backend can make a base of a different initialisation (the cross-init control)."""
        return False

    @abstractmethod
    def make_base(self, *, init: str, seed: int, corpus: Any, out: Path, progress: Progress = quiet) -> dict[str, float]:
        """Write the base model of `init` ("shared" or "other") into `out`; `corpus` serves from-scratch
        pretraining (the experiment's data kind and trait); return metrics."""

    @abstractmethod
    def load(self, path: Path, root: Path) -> Any:
        """A model artifact (full weights, an adapter over its init, or a persona over its init) as an LM."""

    @abstractmethod
    def save(self, lm: Any, out: Path, *, adapter: bool = False) -> None: ...

    @abstractmethod
    def save_persona(self, out: Path, system_prompt: str) -> None:
        """A prompted model: no weights of its own, a system prompt over its init's."""

    @abstractmethod
    def with_lora(self, lm: Any, lora: Any | None) -> Any:
        """Wrap for LoRA training (None: full fine-tune)."""

    @abstractmethod
    def generate(self, lm: Any, prompts: Sequence[list[int]], *, max_new_tokens: int, temperature: float,
                 batch_size: int, seed: int, progress: Progress = quiet) -> list[str]:
        """One sampled completion per prompt (token ids)."""

    @abstractmethod
    def score(self, lm: Any, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int) -> list[float]:
        """Exact log P(continuation | prompt) for each (prompt ids, continuation ids)."""

    @abstractmethod
    def token_scores(self, lm: Any, rows: Sequence[Row], *, batch_size: int, teacher_side: bool = False) -> list[list[float]]:
        """log P of every completion token of each row (end token included), in context (a screen's input)."""

    def position_divergence(self, base: Any, teacher: Any, rows: Sequence[Row], *, batch_size: int) -> list[list[float]]:
        """KL(teacher || base) of the next-token distributions at every completion position (screen `method: kl`);
        a backend that cannot give distributions says so."""
        raise NotImplementedError(f"the {type(self).__name__} backend gives no next-token distributions: use "
                                  "lm.screen.method divergence")

    @abstractmethod
    def train(self, lm: Any, rows: Sequence[Any], sched: Any, gen: Any, *, teacher: Any | None = None,
              allowed: Any | None = None, progress: Progress = quiet) -> float:
        """Completion-only training: SFT, or distillation from `teacher` renormalised over `allowed` tokens."""
