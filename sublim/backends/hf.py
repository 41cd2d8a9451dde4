"""hf: any transformers causal LM by local path or hub id; bf16 and batched generation on GPU, LoRA via peft.

The base artifact is a pointer (`source.json`) to the weights rather than a copy of a multi-GB model: it records
the hub id and revision, or the local directory with a fingerprint of its files, so the pointer's digest changes
when the weights it names do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import field_validator

from sublim.backends import BackendSpec, Progress, backend, quiet
from sublim.backends.lm import SOURCE, TransformersBackend


def fingerprint(directory: Path) -> dict[str, int | str]:
    """Names and sizes of a local model's files, and the md5 of its config: cheap, and changes with the weights."""
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    return {"files": json.dumps(files, sort_keys=True),
            "config_md5": hashlib.md5((directory / "config.json").read_bytes()).hexdigest()}


class HfSpec(BackendSpec):
    """Any transformers causal LM by local path or hub id (hub ids need network access at the base step)."""

    backend: str = "hf"
    model: str  # local directory or hub id, e.g. Qwen/Qwen2.5-7B-Instruct
    other_model: str | None = None  # a different-init model for the cross-init control (same tokenizer family)
    revision: str | None = None  # pin a hub revision for reproducibility

    @field_validator("model", "other_model")
    @classmethod
    def _exists_if_local(cls, value: str | None) -> str | None:
        if value and (value.startswith((".", "/", "~")) or Path(value).exists()):
            if not (Path(value).expanduser() / "config.json").is_file():
                raise ValueError(f"{value}: not a model directory (no config.json)")
        return value


@backend("hf")
class Hf(TransformersBackend):
    Spec = HfSpec
    spec: HfSpec
    follows_prompts = True

    def has_other_init(self) -> bool:
        return self.spec.other_model is not None

    def make_base(self, *, init: str, seed: int, corpus, out: Path, progress: Progress = quiet) -> dict[str, float]:
        name = self.spec.other_model if init == "other" else self.spec.model
        source = {"model": name, "revision": self.spec.revision}
        local = Path(name).expanduser()
        if local.is_dir():
            source.update(model=str(local.resolve()), revision=None, **fingerprint(local))
        (out / SOURCE).write_text(json.dumps(source, indent=1, sort_keys=True))
        return {}
