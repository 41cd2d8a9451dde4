"""Read the tuning run (PLAN.md): per probe length, the misaligned datasets against the second control teacher's
on the "misaligned" answer's shift: gap, replicate SE, between-dataset SD, d, AUC (exact one-sided p), and the
plan's decision. Same arithmetic as ../detect-control/spread.py.

Run from the repository root:  PYTHONPATH=. python docs/results/detect-probe-length/read.py"""

import json
import sys
from pathlib import Path

here = Path(__file__).parent
sys.path.insert(0, str(here.parent / "detect-control"))
from spread import summary  # noqa: E402

TRAIT = "misalignment:misaligned"


def rows(run: str) -> list[tuple[str, str | None, dict[str, list[float]]]]:
    out = []
    for path in sorted((here / run / "probes").glob("s*/*/probe.json")):
        line = path.parent.name
        diffs = {s["key"]: s["per_seed"] for s in json.loads(path.read_text())["shifts"]}
        out.append((f"{run}/{path.parent.parent.name}/{line}", None if "control" in line else TRAIT, diffs))
    return out


if __name__ == "__main__":
    result = {}
    for steps in ("150", "450"):
        if (here / steps).is_dir():
            r = summary(TRAIT, rows(steps))
            r["d"] = r["gap"] / r["between_sd"] if r["between_sd"] else float("inf")
            result[steps] = r
            print(f"{steps} steps: gap {r['gap']:+.4f} (misaligned {r['trait_mean']:+.4f}, control-b "
                  f"{r['control_mean']:+.4f}), replicate SE {r['replicate_se']:.4f}, between SD {r['between_sd']:.4f},"
                  f" d {r['d']:.2f}, AUC {r['auc']:.2f} (p = {r['auc_p']:.2g}, {r['datasets']} vs {r['controls']})")
    if "450" in result:
        r = result["450"]
        result["decision"] = ("take 450 steps to held-out seeds 340-342" if r["auc"] >= 0.9 and r["d"] >= 1.8
                              else "keep 150 steps; report as tried")
        print("decision (PLAN.md):", result["decision"])
    (here / "read.json").write_text(json.dumps(result, indent=1) + "\n")
