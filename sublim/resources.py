"""Pools of prompt pieces live as YAML beside the module that reads them (`sublim/data/maths.py` reads
`sublim/data/maths.yaml`), so a module's resources are found, and tracked as its code dependencies, by name."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import yaml


def resource_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"no module {module!r}")
    return Path(spec.origin).with_suffix(".yaml")


@cache
def load(module: str) -> Any:
    """The YAML file beside `module` (pass `__name__`)."""
    path = resource_path(module)
    return yaml.safe_load(path.read_text(encoding="utf-8"))
