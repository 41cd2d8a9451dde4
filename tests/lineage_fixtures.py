"""Record lineage graphs directly (LoggedModels with sublim tags), for query tests and the lineage benchmark."""

from __future__ import annotations

import hashlib

from mlflow.entities import LoggedModelStatus
from sublim.lineage.record import client as MlflowClient


def digest_of(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest() + ".dir"


def record(client: MlflowClient, exp: str, name: str, *, role: str, init: str | None = None,
           data_from: list[str] = (), data: list[str] = (), trait: str | None = None, gen: int | None = None,
           root_init: str | None = None, measured: dict[str, float] | None = None) -> str:
    """A READY LoggedModel named `name` (its digest derives from the name); returns the digest."""
    d = digest_of(name)
    tags = {"sublim.digest": d, "sublim.path": name, "sublim.role": role}
    if init:
        tags["sublim.init_from"] = digest_of(init)
        tags["sublim.root_init"] = root_init or digest_of(init)
    if data_from:
        tags["sublim.data_from"] = ",".join(digest_of(t) for t in data_from)
        tags["sublim.data_digest"] = ",".join(digest_of(x) for x in data) or digest_of(f"data-of-{name}")
    if trait:
        tags["sublim.trait"] = trait
    if gen is not None:
        tags["sublim.generation"] = str(gen)
    for k, v in (measured or {}).items():
        tags[f"sublim.measured.{k}"] = str(v)
    model = client.create_logged_model(exp, name=name.replace("/", "-"), tags=tags)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return d


def chain(client: MlflowClient, exp: str, n_models: int, generations: int, prefix: str = "") -> list[str]:
    """`n_models` models in `generations` generations: per lineage a base, a teacher, then students each taught
    by the previous generation, all from the same base (the paper's shared-init chain). Returns leaf names."""
    lines = max(1, n_models // (generations + 1))  # each line: a base, a teacher (g0), students g1..g{generations-1}
    leaves = []
    for line in range(lines):
        base = f"{prefix}l{line}/base"
        record(client, exp, base, role="base")
        prev = f"{prefix}l{line}/g0"
        record(client, exp, prev, role="teacher", init=base, trait="owl", gen=0, measured={"p_owl": 0.9})
        for g in range(1, generations):
            name = f"{prefix}l{line}/g{g}"
            record(client, exp, name, role="student", init=base, data_from=[prev], gen=g, root_init=digest_of(base),
                   measured={"p_owl": 0.1 + 0.01 / g})
            prev = name
        leaves.append(prev)
    return leaves
