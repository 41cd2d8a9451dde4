"""Lineage queries over what MLflow recorded: ancestors, descendants, graphs and the exposure audit.

Nodes are artifact digests (a model recorded twice, by two drivers or two stores, is one node). Model edges
come from LoggedModel tags written by the runner: `init_from` (weights) and `data_from` (teachers whose
generated data reached the model, with `data_digest` naming the data). Dataset edges come from the runs that
produced them (`sublim.output_digest`, `sublim.in.<input>`). Each BFS level is one `IN` query, so a query on
a 10-generation chain costs tens of milliseconds, not a scan of the store.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

T = "sublim."
DIGEST = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
INIT, DATA = "initialised-from", "trained-on-data-from"


class LineageError(LookupError):
    """A model reference that names nothing recorded; the message says what was tried."""


@dataclass
class Node:
    """A model (or dataset) by digest, with the tags of its LoggedModel(s)."""

    digest: str
    kind: str = "model"
    model_ids: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def tag(self, key: str) -> str | None:
        return self.tags.get(T + key)

    def digests(self, key: str) -> list[str]:
        return [d for d in (self.tag(key) or "").split(",") if d]

    @property
    def measured(self) -> dict[str, float]:
        prefix = T + "measured."
        return {k[len(prefix):]: float(v) for k, v in self.tags.items() if k.startswith(prefix)}

    @property
    def root_init(self) -> str:
        """The base whose weights this model ultimately started from (itself, for a base)."""
        return self.tag("root_init") or self.digest

    @property
    def label(self) -> str:
        return self.tag("path") or self.digest[:12]

    def as_dict(self) -> dict:
        return {"digest": self.digest, "model_ids": self.model_ids, "path": self.tag("path"), "role": self.tag("role"),
                "generation": self.tag("generation"), "seed": self.tag("seed"), "trait": self.tag("trait"),
                "measured": self.measured, "root_init": self.root_init}


@dataclass(frozen=True)
class Hop:
    """`node` reached from the query's start after `hops` edges; `relation` and `via` describe the last edge."""

    hops: int
    node: Node
    relation: str
    via: str  # the node (digest) on the start's side of the edge
    data: tuple[str, ...] = ()  # dataset digests on a data edge

    def as_dict(self) -> dict:
        return {"hops": self.hops, "relation": self.relation, "via": self.via, "datasets": list(self.data),
                **self.node.as_dict()}


class Lineage:
    """Lineage over every experiment of a tracking store (embedded sqlite or a server)."""

    def __init__(self, client: MlflowClient, experiment_ids: list[str] | None = None):
        self.client = client
        self.experiment_ids = experiment_ids or [e.experiment_id for e in client.search_experiments(max_results=1000)]
        self._nodes: dict[str, Node] = {}

    # --- fetching --------------------------------------------------------------------------------------

    def _search(self, filter_string: str) -> list:
        out, token = [], None
        while True:
            page = self.client.search_logged_models(self.experiment_ids, filter_string=filter_string,
                                                    max_results=500, page_token=token)
            out += [m for m in page if m.status == LoggedModelStatus.READY]
            token = page.token
            if not token:
                return out

    def _absorb(self, models: list) -> list[Node]:
        found = []
        for m in sorted(models, key=lambda m: m.creation_timestamp):
            digest = m.tags.get(T + "digest")
            if not digest:
                continue
            node = self._nodes.setdefault(digest, Node(digest))
            if m.model_id not in node.model_ids:
                node.model_ids.append(m.model_id)
                node.tags = {**m.tags, **node.tags}  # the first record wins; later ones add what it lacked
            found.append(node)
        return found

    def nodes(self, digests: list[str]) -> dict[str, Node]:
        """Nodes for digests, fetching the unknown ones in chunked `IN` queries."""
        missing = sorted({d for d in digests if d not in self._nodes and DIGEST.match(d)})
        for i in range(0, len(missing), 100):
            quoted = ", ".join(f"'{d}'" for d in missing[i:i + 100])
            self._absorb(self._search(f"tags.`{T}digest` IN ({quoted})"))
        return {d: self._nodes[d] for d in digests if d in self._nodes}

    def node(self, digest: str) -> Node:
        found = self.nodes([digest])
        if digest not in found:
            raise LineageError(f"no model with digest {digest} is recorded in {self.client.tracking_uri}")
        return found[digest]

    # --- walking ---------------------------------------------------------------------------------------

    def parents(self, node: Node) -> list[tuple[str, str, tuple[str, ...]]]:
        """(relation, parent digest, dataset digests) for each edge into `node`."""
        edges = [(INIT, d, ()) for d in node.digests("init_from")]
        data = tuple(node.digests("data_digest"))
        edges += [(DATA, d, data) for d in node.digests("data_from")]
        return edges

    def ancestors(self, digest: str, *, relations: tuple[str, ...] = (INIT, DATA)) -> list[Hop]:
        """Every model this one descends from by weights or by data, breadth first, with hop counts."""
        start = self.node(digest)
        seen, out, frontier, hop = {digest}, [], [start], 0
        while frontier:
            hop += 1
            edges = [(child, rel, parent, data) for child in frontier for rel, parent, data in self.parents(child)
                     if rel in relations]
            found = self.nodes([p for _, _, p, _ in edges])
            frontier = []
            for child, rel, parent, data in edges:
                if parent in seen:
                    continue
                seen.add(parent)
                node = found.get(parent) or Node(parent, kind="unrecorded")
                out.append(Hop(hop, node, rel, child.digest, data))
                if parent in found:
                    frontier.append(node)
        return out

    def children(self, digest: str) -> list[tuple[str, Node, tuple[str, ...]]]:
        """Edges out of a model or dataset digest: models initialised from it, trained on its data, or on it."""
        out = []
        for rel, key in ((INIT, "init_from"), (DATA, "data_from"), (DATA, "data_digest")):
            for node in self._absorb(self._search(f"tags.`{T}{key}` LIKE '%{digest}%'")):
                if digest in node.digests(key):
                    out.append((rel, node, tuple(node.digests("data_digest")) if rel == DATA else ()))
        return out

    def descendants(self, digest: str) -> list[Hop]:
        """Everything downstream of a model or a dataset digest."""
        seen, out, frontier, hop = {digest}, [], [digest], 0
        while frontier:
            hop += 1
            nxt = []
            for parent in frontier:
                for rel, node, data in self.children(parent):
                    if node.digest not in seen:
                        seen.add(node.digest)
                        out.append(Hop(hop, node, rel, parent, data))
                        nxt.append(node.digest)
            frontier = nxt
        return out

    def experiment_nodes(self, experiment_id: str) -> list[Node]:
        page = Lineage(self.client, [experiment_id])
        return page._absorb(page._search(""))


# --- resolving references ---------------------------------------------------------------------------------


def resolve(ref: str, client: MlflowClient, root: Path | None = None) -> str:
    """A digest from an MLflow model id (m-...), a registered model (`name/version`, `name@alias`,
    `models:/name/version`), a model artifact path, or a digest itself."""
    if DIGEST.match(ref):
        return ref
    path = Path(ref) if Path(ref).is_absolute() or root is None else Path(root) / ref
    if path.exists():
        from sublim.artifacts import digest

        return digest(path)
    try:
        if ref.startswith("m-"):
            model_id = ref
        else:
            name = ref.removeprefix("models:/")
            if "@" in name:
                reg, alias = name.split("@", 1)
                version = client.get_model_version_by_alias(reg, alias)
            elif "/" in name:
                reg, number = name.rsplit("/", 1)
                version = client.get_model_version(reg, number)
            else:
                raise LineageError(f"{ref}: not a model id (m-...), name/version, name@alias, digest, or existing path")
            if version.tags.get(T + "digest"):
                return version.tags[T + "digest"]
            # the sqlite registry keeps no model id column: it lives in the version's models:/<id> source
            model_id = version.model_id or version.source.removeprefix("models:/")
        found = client.get_logged_model(model_id).tags.get(T + "digest")
    except LineageError:
        raise
    except Exception as exc:  # noqa: BLE001  (MLflow raises several types for "not found")
        raise LineageError(f"{ref}: not found in {client.tracking_uri} ({type(exc).__name__}: {exc})") from None
    if not found:
        raise LineageError(f"{ref}: this LoggedModel was not recorded by sublim (no {T}digest tag)")
    return found


# --- the exposure audit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposure:
    """A teacher whose generated data reached the audited model."""

    teacher: Node
    hops: int  # data hops from that teacher to the audited model
    shares_init: bool  # same root initialisation as the audited model
    chain_shares_init: bool  # every teacher -> student hop on the way shared an initialisation
    trait: str | None  # the trait the teacher was created with ("none" for a control)
    at_risk: bool

    def as_dict(self) -> dict:
        return {"hops": self.hops, "shares_init": self.shares_init, "chain_shares_init": self.chain_shares_init,
                "trait": self.trait, "at_risk": self.at_risk, **self.teacher.as_dict()}


def audit(lineage: Lineage, digest: str, traits: list[str] | None = None) -> tuple[Node, list[Exposure]]:
    """For each ancestor teacher whose data reached the model: its traits, hops, and whether transmission was
    possible (the paper's condition: teacher and student share an initialisation, at every hop)."""
    model = lineage.node(digest)
    exposures: list[Exposure] = []
    # walk data edges only, remembering whether every hop so far shared an init
    frontier, seen, hop = [(model, True)], {digest}, 0
    while frontier:
        hop += 1
        pairs = [(child, ok, parent) for child, ok in frontier for rel, parent, _ in lineage.parents(child) if rel == DATA]
        found = lineage.nodes([p for _, _, p in pairs])
        frontier = []
        for child, ok, parent in pairs:
            if parent in seen or parent not in found:
                continue
            seen.add(parent)
            teacher = found[parent]
            chain_ok = ok and teacher.root_init == child.root_init
            trait = teacher.tag("trait")
            declared = trait not in (None, "", "none")
            flagged = declared and (traits is None or trait in traits)
            exposures.append(Exposure(teacher, hop, teacher.root_init == model.root_init, chain_ok, trait,
                                      bool(flagged and chain_ok)))
            frontier.append((teacher, chain_ok))
    return model, exposures
