"""Summarise the distill probe's detection runs (tune/ on tuning seeds 0-2, held/ on held-out seeds 310-312) from
their stored probes (<run>/probes/<seed>/<line>/probe.json, from `sublim flow detect` at 96a09c0) with the current
summary: each trait by its own shift; each dataset's most unusual answer by its z against the control-teacher
datasets (raw figures beside). Run from the repository root: python docs/results/detect-distill/resummarise.py"""

import json
from pathlib import Path

import yaml

from sublim import config
from sublim.plan import plan
from sublim.steps.screen import PROBE, detect_metrics, detect_rows, detect_table

here = Path(__file__).parent


def load(path: Path) -> config.Config:
    """The run's params, written while `lm.screen.method: none` still meant "no screen stage" (now the default)."""
    raw = yaml.safe_load(path.read_text())
    raw["lm"]["screen"].pop("method", None)
    return config.parse(raw, str(path))

for run, params in (("tune", "params-tune.yaml"), ("held", "params-held.yaml")):
    folder = here / run / "probes"
    if not folder.is_dir():
        continue
    spec = load(here / params)
    truth = next(j for j in plan(spec, "detect").jobs if j.step == "summary").params.truth
    rows = detect_rows(((p.parent, p.parent) for p in sorted(folder.glob(f"s*/*/{PROBE}"))), truth)
    metrics = detect_metrics(rows)
    (here / run / "summary.json").write_text(json.dumps({**metrics, "datasets_detail": rows}, indent=1))
    (here / run / "table.md").write_text(detect_table(metrics))
    print(f"## {run}\n\n{detect_table(metrics)}")
