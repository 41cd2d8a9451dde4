"""The pre-registered reading of PLAN.md: SmolLM2 shown the owl teacher's numbers in context vs the control's.

    python docs/results/confirm/icl-smollm2/verdict.py   ->  verdict.json and the line it prints
"""

from __future__ import annotations

import json
from pathlib import Path

from sublim.stats import paired_test

HERE = Path(__file__).resolve().parent
ALPHA = 0.01
SEEDS = list(range(340, 350))


def measured(seed: int, line: str) -> dict:
    row = json.loads((HERE / "icl" / f"s{seed}-{line}.json").read_text())["models"][0]
    return {"p": row["p_target"], "shots": row["shots"]}


def main() -> None:
    trait = [measured(s, "trait") for s in SEEDS]
    control = [measured(s, "control") for s in SEEDS]
    test = paired_test([r["p"] for r in trait], [r["p"] for r in control])
    p, lo, hi, effect = test.p_value, test.diff.ci_low, test.diff.ci_high, test.diff.mean
    if p is not None and p < ALPHA:
        reading = "transfers" if effect > 0 else "moves away from owl"
    else:
        reading = "could not tell (no same-init SmolLM2 effect to set a null margin)"
    sanity = json.loads((HERE / "teachers.json").read_text()) if (HERE / "teachers.json").exists() else None
    out = {"seeds": SEEDS, "alpha": ALPHA, "reading": reading, "effect": effect, "ci95": [lo, hi],
           "test": test.as_dict(), "describe": test.describe(),
           "trait_context": trait, "control_context": control,
           "base_p_owl": sanity["p_owl"]["base"] if sanity else None,
           "teacher_p_owl": sanity["p_owl"]["owl teacher"] if sanity else None}
    (HERE / "verdict.json").write_text(json.dumps(out, indent=1) + "\n")
    scale = f"; base P(owl) {out['base_p_owl']:.4f}, owl teacher {out['teacher_p_owl']:.3f}" if sanity else ""
    shots = sorted({r["shots"] for r in trait + control})
    print(f"in context (SmolLM2, {shots[0]}-{shots[-1]} shots): {effect:+.4f} [{lo:+.4f}, {hi:+.4f}], {test.describe()}; "
          f"{reading}{scale}")


if __name__ == "__main__":
    main()
