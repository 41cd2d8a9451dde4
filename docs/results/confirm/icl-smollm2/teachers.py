"""Sanity figures beside PLAN.md's test (not tests): the base's and the owl teacher's (the base with the persona)
exact P(owl) on the 24 evaluation questions, and each dataset's filter keep rate.

    python teachers.py WORKSPACE   ->  teachers.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sublim import config
from sublim.steps.data import QUESTIONS

HERE = Path(__file__).resolve().parent


def main(ws: Path) -> None:
    cfg = config.load(ws / "params.yaml").lm
    backend, trait = cfg.model.build(), cfg.trait.build()
    evalset = json.loads((ws / "data/lm/questions" / QUESTIONS).read_text())
    ev = cfg.evaluate.model_copy(update={"samples": 0})
    seed = cfg.seeds[0]
    models = {"base": ws / f"models/lm/s{seed}/base-shared", "owl teacher": ws / f"models/lm/s{seed}/g0-trait-shared"}
    out: dict = {"seed": seed, "p_owl": {}, "distribution": {}, "keep": {}}
    for name, path in models.items():
        m = trait.measure(backend, backend.load(path, ws), evalset, ev, seed=0)
        out["p_owl"][name], out["distribution"][name] = m.p, m.distribution
    for s in cfg.seeds:
        for line in ("trait", "control"):
            kept = ws / f"data/lm/s{s}/g1-{line}/kept"
            n_kept = sum(1 for _ in open(kept / "rows.jsonl"))
            n_rej = sum(1 for _ in open(kept / "rejected.jsonl"))
            out["keep"][f"s{s}-{line}"] = {"kept": n_kept, "generated": n_kept + n_rej}
    (HERE / "teachers.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(json.dumps(out["p_owl"]))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
