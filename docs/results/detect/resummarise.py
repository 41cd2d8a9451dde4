"""Re-summarise the detection run's probes (probes/<seed>/<line>/probe.json, from `sublim flow detect` at ed210dc)
with the current summary: each trait scored by its own shift, naming against the controls' means; and with the
probe's flags recomputed from the stored per-seed shifts under the current rule (Holm over the panel).
Run from the repository root: python docs/results/detect/resummarise.py"""

import json
from dataclasses import asdict
from pathlib import Path

import yaml

from sublim import config
from sublim.plan import plan
from sublim.screen import panel_shifts
from sublim.steps.screen import PROBE, detect_metrics, detect_rows, detect_table

here = Path(__file__).parent


def load(path: Path) -> config.Config:
    """The run's params, written while `lm.screen.method: none` still meant "no screen stage" (now the default)."""
    raw = yaml.safe_load(path.read_text())
    raw["lm"]["screen"].pop("method", None)
    return config.parse(raw, str(path))

spec = load(here / "params.yaml")
truth = next(j for j in plan(spec, "detect").jobs if j.step == "summary").params.truth
probe = spec.detect.probe
for rule, folder in (("as run (raw p < alpha)", here / "probes"), ("Holm over the panel", here / "probes-holm")):
    if folder.name == "probes-holm":  # the same shifts, flagged by the current rule
        for found in sorted((here / "probes").glob(f"s*/*/{PROBE}")):
            diffs = {s["key"]: s["per_seed"] for s in json.loads(found.read_text())["shifts"]}
            # the probe's threshold then: a probability (0.005), the same for every answer
            shifts = panel_shifts(diffs, 0.005, probe.alpha, unit=dict.fromkeys(diffs, 1.0))
            out = folder / found.relative_to(here / "probes")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"flagged": [s.key for s in shifts if s.flagged],
                                       "shifts": [asdict(s) for s in shifts]}, indent=1))
    rows = detect_rows(((p.parent, p.parent) for p in sorted(folder.glob(f"s*/*/{PROBE}"))), truth)
    metrics = detect_metrics(rows)
    name = "holm" if folder.name == "probes-holm" else "as-run"
    (here / f"summary-{name}.json").write_text(json.dumps({**metrics, "datasets_detail": rows}, indent=1))
    (here / f"table-{name}.md").write_text(f"Flags: {rule}\n\n" + detect_table(metrics))
    print(f"## flags: {rule}\n\n{detect_table(metrics)}")
