"""The pre-registered reading of PLAN.md, from the two runs' summaries (distill/metrics.json, sft/metrics.json).

    python docs/results/confirm/cross2/verdict.py   ->  verdict.json and the lines it prints
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALPHA = 0.01


def main() -> None:
    distill, sft = (json.loads((HERE / run / "metrics.json").read_text()) for run in ("distill", "sft"))
    cross = {k: distill[f"p_model_{k}"] for k in ("effect", "effect_ci95", "p_value", "wins", "losses", "ties")}  # another model
    assert cross["effect"] == sft["p_model_effect"], "the cross students must be the same jobs in both runs"
    reference = sft["p_effect"]  # the same-init sft effect on the same seeds: the like-for-like reference
    margin = abs(reference) / 2
    lo, hi = cross["effect_ci95"]
    if cross["p_value"] < ALPHA and cross["effect"] > 0:
        reading = "transfers"
    elif -margin <= lo and hi <= margin:
        reading = "null"
    else:
        reading = "could not tell"
    out = {"seeds": distill["seeds"], "cross": cross, "alpha": ALPHA,
           "same_init_sft": {"effect": sft["p_effect"], "ci95": sft["p_effect_ci95"], "p_value": sft["p_value"]},
           "same_init_distill": {"effect": distill["p_effect"], "ci95": distill["p_effect_ci95"],
                                 "p_value": distill["p_value"]},
           "null_margin": margin, "reading": reading,
           "summary_reading_vs_distill": distill.get("p_model_null"),
           "teachers": {"trait": distill["p_teacher"], "control": distill["p_control_teacher"]}}
    (HERE / "verdict.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"cross (llama, sft): {cross['effect']:+.4f} [{lo:+.4f}, {hi:+.4f}], {cross['wins']}/{len(distill['seeds'])} "
          f"higher, p = {cross['p_value']:.2g}; same-init sft {sft['p_effect']:+.4f} (margin +-{margin:.4f}), "
          f"distill {distill['p_effect']:+.4f}: {reading}")


if __name__ == "__main__":
    main()
