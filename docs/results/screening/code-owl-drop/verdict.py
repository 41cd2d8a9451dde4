"""PLAN.md part A: the pre-registered reading of the drop run (sft2-drop/metrics.json) against the committed raw
and random-mask runs of the same seeds (../code-owl-sft2/raw, ../code-owl-sft2/random).

    python docs/results/screening/code-owl-drop/verdict.py   ->  verdict.json and the line it prints
"""

from __future__ import annotations

import json
from pathlib import Path

from scipy import stats

from sublim.stats import fieller_ratio

HERE = Path(__file__).resolve().parent
SFT2 = HERE.parent / "code-owl-sft2"
ALPHA = 0.05
SHARE = 0.7


def effects(folder: Path) -> tuple[list[int], list[float]]:
    m = json.loads((folder / "metrics.json").read_text())
    return m["seeds"], [s - c for s, c in zip(m["p_student_per_seed"], m["p_control_student_per_seed"])]


def one_sided(diffs: list[float]) -> float:
    return float(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)


def main() -> None:
    (seeds, raw), (s_rand, rand), (s_drop, drop) = (effects(f) for f in (SFT2 / "raw", SFT2 / "random",
                                                                        HERE / "sft2-drop"))
    assert seeds == s_rand == s_drop == list(range(240, 260)), "the runs must be the plan's seeds, in order"
    mask = effects(SFT2 / "divergence")[1]
    p_70 = one_sided([(1 - SHARE) * r - d for r, d in zip(raw, drop)])
    p_rand = one_sided([r - d for r, d in zip(rand, drop)])
    p_rand_worse = one_sided([d - r for r, d in zip(rand, drop)])
    ratio = fieller_ratio(raw, drop)  # mean(drop) / mean(raw) with Fieller's 95% interval
    share = {"estimate": None if ratio.ratio is None else 1 - ratio.ratio,
             "ci95": [1 - ratio.ci_high, 1 - ratio.ci_low] if ratio.bounded else None}
    if p_70 < ALPHA and p_rand < ALPHA:
        reading = "met"
    elif (share["ci95"] is not None and share["ci95"][1] < SHARE) or p_rand_worse < ALPHA:
        reading = "missed"
    else:
        reading = "could not tell"
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    vs_mask = float(stats.ttest_rel(drop, mask).pvalue)  # descriptive: two-sided, drop against the mask
    out = {"seeds": seeds, "alpha": ALPHA, "effect_raw": mean(raw), "effect_drop": mean(drop),
           "effect_random": mean(rand), "effect_divergence_mask": mean(mask), "p_removes_70": p_70,
           "p_beats_random": p_rand, "p_random_beats_drop": p_rand_worse, "share_removed": share,
           "p_drop_vs_mask_two_sided": vs_mask, "reading": reading}
    (HERE / "verdict.json").write_text(json.dumps(out, indent=1) + "\n")
    ci = "unbounded" if share["ci95"] is None else f"[{share['ci95'][0]:.0%}, {share['ci95'][1]:.0%}]"
    est = float("nan") if share["estimate"] is None else share["estimate"]
    print(f"raw {mean(raw):+.4f}, drop {mean(drop):+.4f}, random mask {mean(rand):+.4f}, divergence mask "
          f"{mean(mask):+.4f}; share removed {est:.0%} {ci}; H_70 p {p_70:.2g}, H_rand p {p_rand:.2g}: {reading}; "
          f"drop vs mask p {vs_mask:.2g} (two-sided, descriptive)")


if __name__ == "__main__":
    main()
