"""Lineage pictures: the same graph as Mermaid text, DOT text and a PNG (networkx layout, matplotlib)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sublim.lineage.query import DATA, INIT, Lineage, Node

ROLE_COLOURS = {"base": "#c9c9c9", "teacher": "#f4a261", "student": "#2a9d8f", "control": "#8ecae6"}


@dataclass(frozen=True)
class Graph:
    nodes: dict[str, Node]
    edges: list[tuple[str, str, str]]  # (parent, child, relation): arrows follow the flow of weights and data

    def mermaid(self) -> str:
        ids = {d: f"n{i}" for i, d in enumerate(self.nodes)}
        lines = ["graph LR"]
        for d, node in self.nodes.items():
            lines.append(f'  {ids[d]}["{_text(node)}"]')
        for parent, child, rel in self.edges:
            arrow = "-->" if rel == INIT else "-. data .->"
            lines.append(f"  {ids[parent]} {arrow} {ids[child]}")
        for d, node in self.nodes.items():
            colour = ROLE_COLOURS.get(node.tag("role") or "", "#eeeeee")
            lines.append(f"  style {ids[d]} fill:{colour}")
        return "\n".join(lines) + "\n"

    def dot(self) -> str:
        lines = ["digraph lineage {", "  rankdir=LR; node [shape=box, style=filled, fontsize=10];"]
        for d, node in self.nodes.items():
            colour = ROLE_COLOURS.get(node.tag("role") or "", "#eeeeee")
            lines.append(f'  "{d}" [label="{_text(node)}", fillcolor="{colour}"];')
        for parent, child, rel in self.edges:
            style = "solid" if rel == INIT else "dashed"
            lines.append(f'  "{parent}" -> "{child}" [style={style}, label="{"init" if rel == INIT else "data"}"];')
        return "\n".join(lines + ["}"]) + "\n"

    def png(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import networkx as nx

        g = nx.DiGraph()
        for d, node in self.nodes.items():
            g.add_node(d, layer=_layer(node))
        g.add_edges_from((p, c) for p, c, _ in self.edges)
        pos = nx.multipartite_layout(g, subset_key="layer")
        width = 3 + 2.2 * len({_layer(n) for n in self.nodes.values()})
        fig, ax = plt.subplots(figsize=(width, max(4, 0.45 * len(self.nodes))), dpi=100)
        for rel, style in ((INIT, "solid"), (DATA, "dashed")):
            nx.draw_networkx_edges(g, pos, edgelist=[(p, c) for p, c, r in self.edges if r == rel], style=style,
                                   ax=ax, arrows=True, edge_color="#555555", node_size=1400)
        colours = [ROLE_COLOURS.get(self.nodes[d].tag("role") or "", "#eeeeee") for d in g.nodes]
        nx.draw_networkx_nodes(g, pos, node_color=colours, node_shape="s", node_size=1400, ax=ax)
        nx.draw_networkx_labels(g, pos, {d: _text(self.nodes[d], "\n") for d in g.nodes}, font_size=6, ax=ax)
        ax.set_title("lineage: solid = initialised from, dashed = trained on data from")
        ax.axis("off")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def _layer(node: Node) -> int:
    if node.tag("role") == "base":
        return 0
    gen = node.tag("generation")
    return 1 + int(gen) if gen not in (None, "", "None") else 1


def _text(node: Node, sep: str = " | ") -> str:
    parts = [node.label, node.tag("role") or node.kind]
    if node.tag("trait") and node.tag("trait") != "none":
        parts.append(f"trait {node.tag('trait')}")
    parts += [f"{k}={v:.3g}" for k, v in sorted(node.measured.items())]
    return sep.join(p.replace('"', "'") for p in parts)


def build(lineage: Lineage, nodes: list[Node]) -> Graph:
    """The graph spanned by `nodes` and the edges between them (and to parents they name)."""
    by_digest = {n.digest: n for n in nodes}
    by_digest.update(lineage.nodes([p for n in nodes for _, p, _ in lineage.parents(n)]))
    edges = [(p, n.digest, rel) for n in list(by_digest.values()) for rel, p, _ in lineage.parents(n) if p in by_digest]
    return Graph(by_digest, sorted(set(edges)))


def of_experiment(lineage: Lineage, experiment_id: str) -> Graph:
    return build(lineage, lineage.experiment_nodes(experiment_id))


def write(graph: Graph, out: Path) -> list[Path]:
    """lineage.mmd, lineage.dot and lineage.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "lineage.mmd").write_text(graph.mermaid())
    (out / "lineage.dot").write_text(graph.dot())
    return [out / "lineage.mmd", out / "lineage.dot", graph.png(out / "lineage.png")]


def around(lineage: Lineage, digest: str) -> Graph:
    """A model with all its ancestors and descendants."""
    start = lineage.node(digest)
    nodes = [start] + [h.node for h in lineage.ancestors(digest) if h.node.kind == "model"]
    nodes += [h.node for h in lineage.descendants(digest)]
    return build(lineage, nodes)
