"""Set the probe's flag rule (`screen.probe.threshold`, `screen.probe.alpha`) on the tuning seeds, then apply it,
unchanged, to the held-out seeds. Rule fixed before the tuning run finished (this file's first commit): over the
grid below, take the setting with the largest gap between the share of trait-teacher datasets that would exit 1
(any panel answer flagged) and the share of control-teacher datasets that would; ties go to the stricter setting
(larger threshold, then smaller alpha). Flags are recomputed from each probe's stored per-seed shifts with the
same `panel_shifts` the probe uses. Run from the repository root:
    python docs/results/detect-control/flags.py [tune|held ...]"""

import json
import sys
from pathlib import Path

from sublim.screen import panel_shifts

here = Path(__file__).parent
THRESHOLDS = [0.0, 0.0025, 0.005, 0.01, 0.02]
ALPHAS = [0.01, 0.05, 0.1]


def datasets(run: str) -> list[tuple[str, str | None, dict[str, list[float]]]]:
    """(seed/line, the trait it carries or None for a control teacher's data, per-seed shifts per answer)."""
    truth = json.loads((here / run / "summary.json").read_text())["datasets_detail"]
    label = {r["dataset"].split("/", 2)[-1]: (None if r["label"] == "control" else r["label"]) for r in truth}
    out = []
    for path in sorted((here / run / "probes").glob("s*/*/probe.json")):
        name = f"{path.parent.parent.name}/{path.parent.name}"
        diffs = {s["key"]: s["per_seed"] for s in json.loads(path.read_text())["shifts"]}
        out.append((name, label[name], diffs))
    return out


def rates(rows, threshold: float, alpha: float) -> dict:
    flagged = {name: {s.key for s in panel_shifts(d, threshold, alpha) if s.flagged} for name, _, d in rows}
    pos = [(n, lab) for n, lab, _ in rows if lab]
    neg = [n for n, lab, _ in rows if not lab]
    return {"threshold": threshold, "alpha": alpha,
            "trait_exit1": sum(bool(flagged[n]) for n, _ in pos) / len(pos),
            "trait_right_flagged": sum(lab in flagged[n] for n, lab in pos) / len(pos),
            "control_exit1": sum(bool(flagged[n]) for n in neg) / len(neg),
            "flagged": {n: sorted(f) for n, f in flagged.items()}}


def choose(rows) -> dict:
    grid = [rates(rows, t, a) for t in THRESHOLDS for a in ALPHAS]
    return max(grid, key=lambda r: (r["trait_exit1"] - r["control_exit1"], r["threshold"], -r["alpha"]))


if __name__ == "__main__":
    runs = sys.argv[1:] or ["tune"]
    chosen = choose(datasets("tune"))
    print(f"chosen on tune: threshold {chosen['threshold']}, alpha {chosen['alpha']}")
    for run in runs:
        r = rates(datasets(run), chosen["threshold"], chosen["alpha"])
        (here / run / "flags.json").write_text(json.dumps(r, indent=1))
        print(f"{run}: exit 1 on {r['trait_exit1']:.0%} of trait datasets (right trait flagged in "
              f"{r['trait_right_flagged']:.0%}), on {r['control_exit1']:.0%} of control-teacher datasets")
