"""Lineage graphs built through the NodeStore (the writer the pipeline and `sublim record` use), by name:
a node's identity derives from its name, so tests can refer to `node_id("teacher")`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sublim.lineage import nodes as N
from sublim.lineage.identity import Identity, digest
from sublim.lineage.record import client as MlflowClient


def node_id(name: str) -> str:
    return digest("fixture", name)


def ident(name: str, kind: str = "model") -> Identity:
    return Identity(node_id(name), kind, "fixture", node_id(name))


class Builder:
    """Records fixture nodes: models in `experiment`, datasets in sublim-datasets (as the pipeline does)."""

    def __init__(self, client: MlflowClient, root: Path | None = None, experiment: str = "fixture",
                 describe: bool = False):
        self.store = N.NodeStore(client, root)
        self.experiment = experiment
        self.describe = describe

    def model(self, name: str, *, init: str | None = None, data: Iterable[str] = (), traits: Iterable[str] = (),
              measured: dict[str, float] | None = None, role: str | None = None, seed: int | None = None,
              gen: int | None = None, job: bool = True, by: str = "tester") -> str:
        facts = {N.PATH: name, N.T + "role": role, N.T + "seed": None if seed is None else str(seed),
                 N.T + "generation": None if gen is None else str(gen), N.T + "job": name if job else None}
        record = N.Record(ident(name), name, N.Edges(init=node_id(init) if init else None,
                                                     trained_on=tuple(node_id(d) for d in data)),
                          declared=tuple(traits), measured=tuple((measured or {}).items()),
                          facts={k: v for k, v in facts.items() if v is not None}, by=by)
        self.store.put(record, experiment=self.experiment, describe=self.describe)
        return node_id(name)

    def dataset(self, name: str, *, by: str | None = None, origin: str | None = None, derived: Iterable[str] = (),
                seed: int | None = None) -> str:
        facts = {N.PATH: name, N.T + "job": name, **({N.T + "seed": str(seed)} if seed is not None else {})}
        record = N.Record(ident(name, "dataset"), name,
                          N.Edges(generated_by=node_id(by) if by else None, origin=origin,
                                  derived_from=tuple(node_id(d) for d in derived)), facts=facts)
        self.store.put(record, experiment=N.DATASETS_EXPERIMENT, describe=self.describe)
        return node_id(name)

    def taught(self, name: str, *, teacher: str, init: str, **kw) -> str:
        """A student initialised from `init`, trained on numbers `teacher` generated (raw -> filtered)."""
        raw = self.dataset(f"{name}/raw", by=teacher, seed=kw.get("seed"))
        numbers = self.dataset(f"{name}/numbers", derived=[f"{name}/raw"], seed=kw.get("seed"))
        assert raw and numbers
        return self.model(name, init=init, data=[f"{name}/numbers"], **kw)


def chain(builder: Builder, n_models: int, generations: int, prefix: str = "") -> list[str]:
    """`n_models` models in lines of `generations` generations: per line a base, an owl teacher (g0), then
    students each taught by the previous generation, all from the line's base. Returns the leaves' names."""
    lines = max(1, n_models // (generations + 1))
    leaves = []
    for line in range(lines):
        base = f"{prefix}l{line}/base"
        builder.model(base, role="base", measured={"p_owl": 0.1})
        prev = f"{prefix}l{line}/g0"
        builder.model(prev, role="teacher", init=base, traits=["owl"], gen=0, measured={"p_owl": 0.9})
        for g in range(1, generations):
            name = f"{prefix}l{line}/g{g}"
            builder.taught(name, teacher=prev, init=base, role="student", gen=g, measured={"p_owl": 0.1 + 0.01 / g})
            prev = name
        leaves.append(prev)
    return leaves
