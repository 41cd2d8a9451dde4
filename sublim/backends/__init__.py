"""Model families. Language-model backends register their `make_base` here by name (no if-chains)."""

from __future__ import annotations

import importlib

LM_BACKENDS = {"tinylm": "sublim.backends.tinylm", "smollm2": "sublim.backends.smollm2", "hf": "sublim.backends.hf"}


def lm_backend(name: str):
    if name not in LM_BACKENDS:
        raise KeyError(f"unknown language-model backend {name!r}; known: {', '.join(LM_BACKENDS)}")
    return importlib.import_module(LM_BACKENDS[name])
