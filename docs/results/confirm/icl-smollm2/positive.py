"""A descriptive check added after PLAN.md was committed (not a test of it): can this measurement see anything
learned in context at all? The same base, shots and questions, with 8 rows that *name* the trait in context
(the pairs an sft owl teacher is trained on, "favourite animal?" -> "owl") against 8 of its control's pairs
(uniformly random animals, owl among them), per seed.

    python positive.py WORKSPACE   ->  positive.json
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from sublim import config
from sublim.stats import paired_test
from sublim.steps.data import QUESTIONS

HERE = Path(__file__).resolve().parent
SEEDS = list(range(340, 350))
SHOTS = 8


def main(ws: Path) -> None:
    import torch

    full = config.load(ws / "params.yaml")
    torch.set_num_threads(full.runtime.threads["lm"])
    cfg = full.lm
    backend, trait = cfg.model.build(), cfg.trait.build()
    evalset = json.loads((ws / "data/lm/questions" / QUESTIONS).read_text())
    evalset = trait.evaluation_set(cfg.icl.questions) | {k: v for k, v in evalset.items() if not isinstance(v, list)}
    ev = cfg.evaluate.model_copy(update={"samples": 0})
    lm = backend.load(ws / f"models/lm/s{SEEDS[0]}/base-shared", ws)
    p: dict[str, list[float]] = {"trait": [], "control": []}
    for seed in SEEDS:
        for line in p:
            lm.context = trait.teacher_pairs(random.Random(f"{seed}-{line}"), SHOTS, line)
            p[line].append(trait.measure(backend, lm, evalset, ev, seed=seed).p)
    test = paired_test(p["trait"], p["control"])
    out = {"seeds": SEEDS, "shots": SHOTS, "p_owl": p, "effect": test.diff.mean,
           "ci95": [test.diff.ci_low, test.diff.ci_high], "describe": test.describe()}
    (HERE / "positive.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"explicit rows in context: {test.diff.mean:+.4f} [{test.diff.ci_low:+.4f}, {test.diff.ci_high:+.4f}]; "
          f"{test.describe()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
