"""The exposure audit: could a teacher's trait have reached this model?

The condition (Cloud et al., 2025): a student picks up a teacher's trait through data that never mentions it
when both share an initialisation. Over a lineage graph that gives:
- init links: a model starts from another's weights; whatever that model carried comes along, always;
- data links: a student trained on data a teacher generated (directly, or through filtered or derived copies);
  the trait can come along only when teacher and student share their root init (followed up init edges).
A trait is at risk when a model with a declared or measured trait reaches the audited model by a path on which
every data link shares its root init. Reachability over those "transmitting" links answers that for every
path at once (no path is dropped, no order of tags matters), by one breadth-first search: O(V + E) on the
ancestry, fetched with one query per level. `--all` also enumerates every path, capped per teacher.
Never "clean" when something is unknown: an edge to an identity no record has, a dataset with no recorded
origin, or a measured trait that cannot be compared with its teacher's root init make the verdict "unknown".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from sublim.lineage.query import Lineage, Node, RefError

CLEAN, AT_RISK, UNKNOWN = "clean", "at risk", "unknown provenance"
EXIT = {CLEAN: 0, AT_RISK: 1, UNKNOWN: 2}
DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class Trait:
    """A declared trait, or a measurement that differs from the same one on the model's root init."""

    name: str  # the declared name, or the measured key (p_owl)
    how: str  # "declared" | "measured"
    value: float | None = None
    baseline: float | None = None
    by: str | None = None

    def matches(self, wanted: Iterable[str] | None) -> bool:
        """`--trait owl` matches the declared trait owl and measurements named owl or *_owl (p_owl)."""
        if wanted is None:
            return True
        return any(self.name == w or self.name.endswith("_" + w) for w in wanted)

    def __str__(self) -> str:
        if self.how == "declared":
            return f"{self.name} (declared)"
        return f"{self.name}={self.value:.3g} (root init {self.baseline:.3g}, {self.value - self.baseline:+.3g})"

    def as_dict(self) -> dict:
        return {"name": self.name, "how": self.how, "value": self.value, "baseline": self.baseline, "by": self.by}


@dataclass(frozen=True)
class Link:
    """One model-to-model step: `child` initialised from `parent`, or trained on data `parent` generated
    (`via` the datasets in between, from the child's training set back to the generator's output)."""

    parent: str
    child: str
    relation: str  # "init" | "data"
    via: tuple[str, ...] = ()
    shares_init: bool = True  # a data link: teacher and student share their root init

    @property
    def transmits(self) -> bool:
        return self.relation == "init" or self.shares_init


@dataclass(frozen=True)
class Path:
    """Links from a teacher down to the audited model."""

    links: tuple[Link, ...]

    @property
    def at_risk(self) -> bool:
        return all(link.transmits for link in self.links)

    def __len__(self) -> int:
        return len(self.links)

    def text(self, nodes: dict[str, Node]) -> str:
        if not self.links:
            return "(the model itself)"
        parts = [_label(nodes, self.links[0].parent)]
        for link in self.links:
            if link.relation == "init":
                parts.append(f" -init-> {_label(nodes, link.child)}")
            else:
                shared = "shared init" if link.shares_init else "DIFFERENT init"
                via = ", ".join(_via_label(nodes, d) for d in link.via)
                parts.append(f" =data[{via}; {shared}]=> {_label(nodes, link.child)}")
        return "".join(parts)

    def as_dict(self, nodes: dict[str, Node]) -> dict:
        return {"hops": len(self), "at_risk": self.at_risk, "text": self.text(nodes),
                "screened": {d: screened for link in self.links for d in link.via
                             if (screened := _screened(nodes, d))},
                "links": [{"parent": l.parent, "child": l.child, "relation": l.relation, "via": list(l.via),
                           "shares_init": l.shares_init} for l in self.links]}


def _screened(nodes: dict[str, Node], node_id: str) -> str | None:
    """What a screen found in a dataset on the path (`sublim screen` or the pipeline's screen stage)."""
    node = nodes.get(node_id)
    return node.tags.get("sublim.screen_found") if node else None


def _via_label(nodes: dict[str, Node], node_id: str) -> str:
    found = _screened(nodes, node_id)
    return _label(nodes, node_id) + (f" (screened: {found})" if found else "")


def _label(nodes: dict[str, Node], node_id: str) -> str:
    node = nodes.get(node_id)
    return node.label if node else node_id[:12]


@dataclass(frozen=True)
class Exposure:
    """A model upstream of the audited one that carries a trait, or whose generated data reached it."""

    teacher: Node
    traits: tuple[Trait, ...]
    path: Path  # the shortest at-risk path when there is one, else the shortest path
    at_risk: bool
    shares_init: bool  # same root init as the audited model
    paths: tuple[Path, ...] = ()  # every path, with --all (capped)

    @property
    def hops(self) -> int:
        return len(self.path)

    def as_dict(self, nodes: dict[str, Node]) -> dict:
        return {"teacher": self.teacher.as_dict(), "traits": [t.as_dict() for t in self.traits],
                "at_risk": self.at_risk, "hops": self.hops, "shares_init": self.shares_init,
                "path": self.path.as_dict(nodes), "paths": [p.as_dict(nodes) for p in self.paths]}


@dataclass(frozen=True)
class Unknown:
    """Something the audit cannot vouch for, and why."""

    id: str
    why: str

    def as_dict(self) -> dict:
        return {"id": self.id, "why": self.why}


@dataclass
class Report:
    model: Node
    root_init: str
    own_traits: tuple[Trait, ...]
    exposures: list[Exposure]
    unknowns: list[Unknown]
    nodes: dict[str, Node] = field(repr=False)
    threshold: float = DEFAULT_THRESHOLD
    truncated: bool = False  # --all stopped enumerating at the cap

    @property
    def at_risk(self) -> list[str]:
        names = {t.name for t in self.own_traits} | {t.name for e in self.exposures if e.at_risk for t in e.traits}
        return sorted(names)

    @property
    def verdict(self) -> str:
        return AT_RISK if self.at_risk else UNKNOWN if self.unknowns else CLEAN

    @property
    def screens(self) -> dict[str, str]:
        """Datasets the model was trained on, directly or through the copies they derive from, that a screen
        examined: {dataset label: what the screen found and did}."""
        found, todo, seen = {}, list(self.model.edges.trained_on), set()
        while todo:
            node_id = todo.pop()
            node = self.nodes.get(node_id)
            if node_id in seen or node is None:
                continue
            seen.add(node_id)
            if (text := _screened(self.nodes, node_id)) is not None:
                found[node.label] = text
            todo += list(node.edges.derived_from)
        return found

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    def as_dict(self) -> dict:
        return {"model": self.model.as_dict(), "root_init": self.root_init, "verdict": self.verdict,
                "exit_code": self.exit_code, "at_risk": self.at_risk, "threshold": self.threshold,
                "own_traits": [t.as_dict() for t in self.own_traits],
                "exposures": [e.as_dict(self.nodes) for e in self.exposures],
                "unknowns": [u.as_dict() for u in self.unknowns], "paths_truncated": self.truncated,
                "screened": self.screens}


# --- the graph as model-to-model links ----------------------------------------------------------------------


class Ancestry:
    """The audited model's ancestry with root inits, links and traits computed once (memoised)."""

    def __init__(self, nodes: dict[str, Node], threshold: float):
        self.nodes = nodes
        self.threshold = threshold
        self._roots: dict[str, str] = {}
        self._sources: dict[str, dict[str, tuple[str, ...]]] = {}

    def root(self, model_id: str) -> str:
        """Follow init edges up to the first model with none (or to an identity no record has)."""
        chain, current = [], model_id
        while current not in self._roots:
            node = self.nodes.get(current)
            parent = node.edges.init if node is not None and node.recorded else None
            if parent is None or parent in chain or parent == current:
                self._roots[current] = current
                break
            chain.append(current)
            current = parent
        for c in chain:
            self._roots[c] = self._roots[current]
        return self._roots[model_id]

    def generators(self, dataset_id: str) -> dict[str, tuple[str, ...]]:
        """Models whose generated rows reach a dataset -> the shortest chain of datasets on the way."""
        if dataset_id in self._sources:
            return self._sources[dataset_id]
        self._sources[dataset_id] = {}  # a cycle contributes nothing
        node = self.nodes.get(dataset_id)
        out: dict[str, tuple[str, ...]] = {}
        if node is not None and node.kind == "dataset":
            e = node.edges
            if e.generated_by:
                out[e.generated_by] = (dataset_id,)
            for source in (*e.derived_from, *([e.prompts] if e.prompts else [])):
                for model, via in self.generators(source).items():
                    if model not in out or len(via) + 1 < len(out[model]):
                        out[model] = (dataset_id, *via)
        self._sources[dataset_id] = out
        return out

    def links_into(self, model_id: str) -> list[Link]:
        node = self.nodes[model_id]
        if not node.recorded or node.kind != "model":
            return []
        e = node.edges
        links = [Link(e.init, model_id, "init")] if e.init else []
        sources: dict[str, tuple[str, ...]] = {}
        for dataset in e.trained_on:
            for model, via in self.generators(dataset).items():
                if model not in sources or len(via) < len(sources[model]):
                    sources[model] = via
        links += [Link(t, model_id, "data", via, self.root(t) == self.root(model_id)) for t, via in sources.items()]
        return links

    def traits(self, model_id: str) -> tuple[tuple[Trait, ...], list[str]]:
        """(traits, measured keys that cannot be compared with the root init's)."""
        node = self.nodes.get(model_id)
        if node is None or not node.recorded:
            return (), []
        found = [Trait(name, "declared", by=by) for name, by in sorted(node.declared.items())]
        root = self.nodes.get(self.root(model_id))
        baseline = root.measured if root is not None and root.recorded else {}
        blind = []
        for key, value in sorted(node.measured.items()):
            if key not in baseline:
                blind.append(key)
            elif abs(value - baseline[key]) > self.threshold:
                found.append(Trait(key, "measured", value, baseline[key]))
        return tuple(found), blind

    def gaps(self) -> list[Unknown]:
        """Edges to identities no record has, datasets with no recorded origin, edges to the wrong kind."""
        out = []
        expect = {"init": "model", "generated_by": "model", "trained_on": "dataset", "derived_from": "dataset",
                  "prompts": "dataset"}
        for node in self.nodes.values():
            if not node.recorded:
                continue
            for rel, target in node.edges.parents:
                other = self.nodes.get(target)
                if other is None or not other.recorded:
                    out.append(Unknown(target, f"{node.label}: {rel.replace('_', '-')} {target[:12]}, which was "
                                               "never recorded"))
                elif other.kind != expect[rel]:
                    out.append(Unknown(target, f"{node.label}: {rel.replace('_', '-')} names {other.label}, a "
                                               f"{other.kind}, not a {expect[rel]}"))
            e = node.edges
            if node.kind == "dataset" and not (e.generated_by or e.origin or e.derived_from):
                out.append(Unknown(node.id, f"{node.label}: a dataset with no recorded origin (record it with "
                                            "--generated-by MODEL or --origin human|external|synthetic)"))
        return sorted(set(out), key=lambda u: u.why)


def _blind(nodes: dict, anc: Ancestry, model_id: str, blind: list[str], traits: list[str] | None) -> list[Unknown]:
    """A measurement its root init lacks cannot say whether the model carries the trait: neither at risk nor
    clean. Applies to the audited model's own measurements as to a teacher's."""
    if not [k for k in blind if Trait(k, "measured").matches(traits)]:
        return []
    return [Unknown(model_id, f"{nodes[model_id].label}: measured {', '.join(blind)} but its root init "
                              f"{_label(nodes, anc.root(model_id))} has no such measurement to compare with")]


def _shortest(target: str, links: dict[str, list[Link]], keep) -> dict[str, Path]:
    """Breadth first from the audited model up its links: each ancestor's shortest path down to it."""
    best = {target: Path(())}
    queue = deque([target])
    while queue:
        child = queue.popleft()
        for link in links.get(child, []):
            if keep(link) and link.parent not in best:
                best[link.parent] = Path((link, *best[child].links))
                queue.append(link.parent)
    return best


def _every_path(start: str, target: str, down: dict[str, list[Link]], cap: int) -> tuple[list[Path], bool]:
    """All simple paths start -> target (depth first), at most `cap`; True when the cap cut it short."""
    found: list[Path] = []
    stack: list[tuple[str, tuple[Link, ...], frozenset[str]]] = [(start, (), frozenset([start]))]
    while stack:
        node, links, seen = stack.pop()
        if node == target:
            found.append(Path(links))
            if len(found) >= cap:
                return sorted(found, key=len), bool(stack)
            continue
        for link in down.get(node, []):
            if link.child not in seen:
                stack.append((link.child, (*links, link), seen | {link.child}))
    return sorted(found, key=len), False


def audit(lineage: Lineage, model_id: str, *, traits: list[str] | None = None,
          threshold: float = DEFAULT_THRESHOLD, all_paths: bool = False, max_paths: int = 100) -> Report:
    """Audit one model: every teacher that reaches it, whether its traits could have come along, unknowns."""
    nodes = lineage.subgraph(model_id)
    model = nodes[model_id]
    if model.kind != "model":
        raise RefError(f"{model.label}: is a {model.kind}, not a model; audit the models trained on it")
    anc = Ancestry(nodes, threshold)
    models = [n for n in nodes if nodes[n].kind == "model"]
    into = {m: anc.links_into(m) for m in models}
    any_path = _shortest(model_id, into, lambda link: True)
    risky = _shortest(model_id, into, lambda link: link.transmits)
    teachers = {link.parent for links in into.values() for link in links if link.relation == "data"}
    down: dict[str, list[Link]] = {}
    if all_paths:
        for links in into.values():
            for link in links:
                down.setdefault(link.parent, []).append(link)
    unknowns, exposures, truncated = anc.gaps(), [], False
    own, own_blind = anc.traits(model_id)
    own = tuple(t for t in own if t.matches(traits))
    unknowns += _blind(nodes, anc, model_id, own_blind, traits)
    for ancestor in sorted(any_path, key=lambda a: (len(any_path[a]), nodes[a].label)):
        if ancestor == model_id or ancestor not in nodes or not nodes[ancestor].recorded:
            continue
        found, blind = anc.traits(ancestor)
        found = tuple(t for t in found if t.matches(traits))
        if not found and ancestor not in teachers:
            continue
        at_risk = bool(found) and ancestor in risky
        if ancestor in risky:
            unknowns += _blind(nodes, anc, ancestor, blind, traits)
        paths: tuple[Path, ...] = ()
        if all_paths:
            listed, cut = _every_path(ancestor, model_id, down, max_paths)
            paths, truncated = tuple(listed), truncated or cut
        exposures.append(Exposure(nodes[ancestor], found, risky.get(ancestor) or any_path[ancestor], at_risk,
                                  anc.root(ancestor) == anc.root(model_id), paths))
    return Report(model, anc.root(model_id), own, exposures, unknowns, nodes, threshold, truncated)
