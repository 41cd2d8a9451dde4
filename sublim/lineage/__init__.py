"""Lineage for any model: record (record.py), read (query.py), audit (audit.py), publish (card.py, graph.py).

`record_model` and `record_dataset` are importable from here (MLflow loads on first use); the audit is
`sublim.lineage.audit.audit`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["record_dataset", "record_model"]


def __getattr__(name: str) -> Any:
    if name in ("record_model", "record_dataset"):
        from sublim.lineage import record

        return getattr(record, name)
    raise AttributeError(f"module 'sublim.lineage' has no attribute {name!r}")
