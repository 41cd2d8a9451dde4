"""hf: any transformers causal LM by local path or hub id; bf16 and batched generation on GPU, LoRA via peft.

The base artifact is a pointer (`source.json`) to the weights rather than a copy of a multi-GB model: it records
the hub id and revision, or the local directory with a fingerprint of its files, so the pointer's digest changes
when the weights it names do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sublim.backends.lm import SOURCE


def fingerprint(directory: Path) -> dict[str, int | str]:
    """Names and sizes of a local model's files, and the md5 of its config: cheap, and changes with the weights."""
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    return {"files": json.dumps(files, sort_keys=True),
            "config_md5": hashlib.md5((directory / "config.json").read_bytes()).hexdigest()}


def make_base(cfg, *, category: str, choices: list[str], init: str, out: Path, seed: int, progress) -> dict:
    name = cfg.other_model if init == "other" else cfg.model
    source = {"model": name, "revision": cfg.revision}
    local = Path(name).expanduser()
    if local.is_dir():
        source.update(model=str(local.resolve()), revision=None, **fingerprint(local))
    (out / SOURCE).write_text(json.dumps(source, indent=1, sort_keys=True))
    return {}
