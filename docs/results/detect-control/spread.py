"""Why the probe does not detect misalignment against its control teacher: signal against teacher-to-teacher spread.

Over every seed probed against the control teacher (tuning 0-2, held-out 320-322 and 330-332: 9 per trait), each
dataset's shift on its trait's own answer (the mean over its 4 probe replicates) is split into what more replicates
would remove (the replicate noise, var/4 within a dataset) and what they would not (the spread between datasets
of one kind: independent teachers write different data). The ceiling is the AUC that probes with noiseless
replicates would reach if the shifts were normal with the spreads measured here: Phi(d / sqrt(2)), d = the gap
between trait datasets and the second control teacher's datasets of the same view (`preference-control-b`
for the animals, `misalignment-control-b` for misalignment) in units of the between-dataset spread. Descriptive: it pools tuning and
held-out seeds and sets nothing.

Run from the repository root:  PYTHONPATH=. python docs/results/detect-control/spread.py"""

import json
import statistics as st
from pathlib import Path

from scipy import stats

from flags import datasets  # noqa: E402  (the same reading of the stored probes as the flag rules)

here = Path(__file__).parent
RUNS = ["tune", "held", "held2"]
TRAITS = ["preference:owl", "preference:cat", "preference:dog", "misalignment:misaligned"]


def between(means: list[float], noise: float) -> float:
    """Spread between datasets beyond replicate noise (method of moments, floored at 0)."""
    return max(st.variance(means) - noise, 0.0) ** 0.5


def summary(trait: str, rows) -> dict:
    pos = [d[trait] for _, lab, d in rows if lab == trait]
    view = trait.split(":")[0]  # the matched negatives: the second control teacher of the trait's own view
    neg = [d[trait] for name, lab, d in rows if lab is None and name.rsplit("/", 1)[1].startswith(view)]
    noise = st.mean(st.variance(r) / len(r) for r in pos + neg)  # replicate variance of a dataset's mean
    pm, nm = [st.mean(r) for r in pos], [st.mean(r) for r in neg]
    spread = (between(pm, noise) ** 2 / 2 + between(nm, noise) ** 2 / 2) ** 0.5
    gap = st.mean(pm) - st.mean(nm)
    mw = stats.mannwhitneyu(pm, nm, alternative="greater", method="exact")
    d = gap / spread if spread else float("inf")
    return {"trait": trait, "datasets": len(pm), "controls": len(nm), "gap": gap,
            "trait_mean": st.mean(pm), "control_mean": st.mean(nm),
            "replicate_se": noise ** 0.5, "between_sd": spread,
            "auc": mw.statistic / (len(pm) * len(nm)), "auc_p": mw.pvalue,
            "auc_ceiling": float(stats.norm.cdf(d / 2 ** 0.5)),
            "between_dominates": noise < spread ** 2}


if __name__ == "__main__":
    rows = [r for run in RUNS for r in datasets(run)]
    out = [summary(t, rows) for t in TRAITS]
    (here / "spread.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| trait | datasets vs control teachers' | gap in own answer's shift | replicate SE | between-dataset SD "
          "| AUC (exact one-sided p) | ceiling with noiseless replicates |")
    print("|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['trait']} | {r['datasets']} vs {r['controls']} | {r['gap']:+.4f} | {r['replicate_se']:.4f} | "
              f"{r['between_sd']:.4f} | {r['auc']:.2f} ({r['auc_p']:.2g}) | {r['auc_ceiling']:.2f} |")
