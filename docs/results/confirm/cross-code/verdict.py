"""The pre-registered reading of PLAN.md: the cross-architecture row against the same-init sft effect.

    python docs/results/confirm/cross-code/verdict.py   ->  verdict.json and the line it prints
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALPHA = 0.01
MARGIN = 0.0150  # half the same-init sft effect on seeds 240-259, fixed in PLAN.md


def main() -> None:
    run = json.loads((HERE / "cross" / "metrics.json").read_text())
    raw = json.loads((HERE.parent.parent / "screening" / "code-owl-sft2" / "raw" / "metrics.json").read_text())
    assert run["seeds"] == raw["seeds"] == list(range(240, 260)), "the plan's seeds"
    assert abs(run["p_effect"] - raw["p_effect"]) < 1e-12, "the same-init students must be the same jobs"
    cross = {k: run[f"p_model_{k}"] for k in ("effect", "effect_ci95", "p_value", "wins", "losses", "ties")}
    lo, hi = cross["effect_ci95"]
    if cross["p_value"] < ALPHA and cross["effect"] > 0:
        reading = "transfers"
    elif -MARGIN <= lo and hi <= MARGIN:
        reading = "null"
    else:
        reading = "could not tell"
    out = {"seeds": run["seeds"], "cross": cross, "alpha": ALPHA, "null_margin": MARGIN, "reading": reading,
           "same_init_sft": {"effect": run["p_effect"], "ci95": run["p_effect_ci95"], "p_value": run["p_value"]}}
    (HERE / "verdict.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"cross (llama, sft): {cross['effect']:+.4f} [{lo:+.4f}, {hi:+.4f}], {cross['wins']}/{len(run['seeds'])} "
          f"higher, p = {cross['p_value']:.2g}; same-init sft {run['p_effect']:+.4f} (margin +-{MARGIN:.4f}): {reading}")


if __name__ == "__main__":
    main()
