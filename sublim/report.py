"""Pictures and tables of results: PNG bar charts with CI whiskers, Markdown tables."""

from __future__ import annotations

from pathlib import Path

from sublim.stats import Estimate


def _pyplot():
    """matplotlib loads lazily: most processes (a DVC stage per job) never draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(bars: dict[str, Estimate], path: Path, *, ylabel: str, title: str, chance: float | None = None) -> Path:
    """One bar per model with its 95% CI and the per-seed points on top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.4 * len(bars) + 2, 4), dpi=110)
    labels = list(bars)
    means = [bars[k].mean for k in labels]
    err = [[bars[k].mean - bars[k].ci_low for k in labels], [bars[k].ci_high - bars[k].mean for k in labels]]
    ax.bar(labels, means, yerr=err, capsize=6, color="#7aa6c2", edgecolor="#2f5d7c")
    for i, k in enumerate(labels):
        ax.scatter([i] * len(bars[k].values), bars[k].values, color="#1b3a4b", s=12, zorder=3)
    if chance is not None:
        ax.axhline(chance, ls="--", color="grey", lw=1, label="chance")
        ax.legend(loc="upper right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def line_chart(series: dict[str, dict[float, Estimate]], path: Path, *, ylabel: str, title: str,
               xlabel: str = "generation (0 = teacher)") -> Path:
    """A value per x (a generation, a swept setting) with CI whiskers: how a trait decays along a chain of
    students, or how it grows with the number of auxiliary logits."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, points in series.items():
        gens = sorted(points)
        ax.errorbar(gens, [points[g].mean for g in gens], capsize=4, marker="o", label=name,
                    yerr=[[points[g].mean - points[g].ci_low for g in gens], [points[g].ci_high - points[g].mean for g in gens]])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def heatmaps(frames: dict, path: Path, *, title: str) -> Path:
    """One heat map per frame (rows: teachers, columns: evaluated choices), a shared colour scale centred on 0,
    the diagonal outlined: a specific transfer reads as a dark diagonal."""
    plt = _pyplot()
    import numpy as np

    vmax = max(float(np.abs(f.values).max()) for f in frames.values()) or 1.0
    fig, axes = plt.subplots(1, len(frames), figsize=(0.75 * len(next(iter(frames.values())).columns) * len(frames) + 2, 3.8),
                             dpi=110, squeeze=False)
    for ax, (name, frame) in zip(axes[0], frames.items()):
        im = ax.imshow(frame.values, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_xticks(range(len(frame.columns)), frame.columns, rotation=45, ha="right")
        ax.set_yticks(range(len(frame.index)), frame.index)
        ax.set_xlabel("evaluated choice")
        ax.set_ylabel("teacher's target")
        ax.set_title(f"{name} init students")
        for i, t in enumerate(frame.index):
            if t in frame.columns:
                j = list(frame.columns).index(t)
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
            for j, c in enumerate(frame.columns):
                ax.text(j, i, f"{frame.iat[i, j] * 1000:.1f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="shift in P (x1000 in cells)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
