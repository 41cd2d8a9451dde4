"""The pre-registered reading of PLAN.md from the three runs' summaries (raw/, divergence/, random/ metrics.json).

    python docs/results/screening/code-owl-sft2/verdict.py   ->  verdict.json and the lines it prints
"""

from __future__ import annotations

import json
from pathlib import Path

from scipy import stats

from sublim.stats import fieller_ratio

HERE = Path(__file__).resolve().parent
ALPHA = 0.05
SHARE = 0.7


def effects(run: str) -> tuple[list[int], list[float]]:
    m = json.loads((HERE / run / "metrics.json").read_text())
    return m["seeds"], [s - c for s, c in zip(m["p_student_per_seed"], m["p_control_student_per_seed"])]


def one_sided(diffs: list[float]) -> float:
    return float(stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue)


def main() -> None:
    (seeds, raw), (s_div, div), (s_rand, rand) = (effects(r) for r in ("raw", "divergence", "random"))
    assert seeds == s_div == s_rand == list(range(240, 260)), "the three runs must be the plan's seeds, in order"
    p_raw = one_sided(raw)
    p_70 = one_sided([(1 - SHARE) * r - d for r, d in zip(raw, div)])
    p_rand = one_sided([r - d for r, d in zip(rand, div)])
    p_rand_worse = one_sided([d - r for r, d in zip(rand, div)])
    ratio = fieller_ratio(raw, div)  # mean(div) / mean(raw) with Fieller's 95% interval
    share = {"estimate": None if ratio.ratio is None else 1 - ratio.ratio,
             "ci95": [1 - ratio.ci_high, 1 - ratio.ci_low] if ratio.bounded else None}
    if p_raw >= ALPHA:
        reading = "could not tell (no transfer to remove on these seeds)"
    elif p_70 < ALPHA and p_rand < ALPHA:
        reading = "met"
    elif (share["ci95"] is not None and share["ci95"][1] < SHARE) or p_rand_worse < ALPHA:
        reading = "missed"
    else:
        reading = "could not tell"
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {"seeds": seeds, "alpha": ALPHA, "effect_raw": mean(raw), "effect_divergence": mean(div),
           "effect_random": mean(rand), "p_raw": p_raw, "p_removes_70": p_70, "p_beats_random": p_rand,
           "p_random_beats_divergence": p_rand_worse, "share_removed": share, "reading": reading}
    (HERE / "verdict.json").write_text(json.dumps(out, indent=1) + "\n")
    ci = "unbounded" if share["ci95"] is None else f"[{share['ci95'][0]:.0%}, {share['ci95'][1]:.0%}]"
    print(f"raw {mean(raw):+.4f} (p {p_raw:.2g}), divergence {mean(div):+.4f}, random {mean(rand):+.4f}; "
          f"share removed {share['estimate'] or float('nan'):.0%} {ci}; H_70 p {p_70:.2g}, H_rand p {p_rand:.2g}: {reading}")


if __name__ == "__main__":
    main()
