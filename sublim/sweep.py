"""Sweeps: one pipeline over a grid of parameter values (e.g. five animals), as one DAG of jobs.

Each point of the grid is the pipeline planned with its overrides, under `sweeps/<sweep>/<point>/`. Jobs that
are identical across points (same step, params and inputs: the bases, the control teachers and their students
in a sweep over target animals) are merged, so they run once and every point reads the same artifact.
A point whose params are invalid (say, an animal not among the choices) is reported, not run.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from sublim import config
from sublim.config import Section
from sublim.job import Job
from sublim.plan import Plan, plan

SWEEPS = Path("sweeps")


@dataclass(frozen=True)
class Point:
    name: str  # e.g. "lm.trait.target=owl"
    overrides: tuple[tuple[str, Any], ...]


def parse_sets(sets: list[str]) -> dict[str, list[Any]]:
    """`key=a,b,c` strings (dotted params keys) -> {key: [a, b, c]}; each value is YAML (a scalar, list or mapping)."""
    grid: dict[str, list[Any]] = {}
    for item in sets:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise config.ConfigError(f"--set {item!r}: expected key=value[,value...], e.g. lm.trait.target=owl,cat")
        if key.strip() in grid:
            raise config.ConfigError(f"--set {key.strip()} is given twice: list its values in one --set "
                                     f"({key.strip()}=a,b,c)")
        if any(not v.strip() for v in _split(values)):  # `1,,3` or `1,2,`: a typo, not a point of value None
            raise config.ConfigError(f"--set {key.strip()}={values}: an empty value (use null for a setting's "
                                     "null)")
        grid[key.strip()] = [yaml.safe_load(v) for v in _split(values)]
        seen = [json.dumps(v, sort_keys=True, default=str) for v in grid[key.strip()]]
        if len(set(seen)) < len(seen):
            twice = next(v for v in seen if seen.count(v) > 1)
            raise config.ConfigError(f"--set {key.strip()} lists {twice} twice: each value is one point")
    return grid


def _split(values: str) -> list[str]:
    """Split on commas outside brackets, so a value may be a YAML list or mapping:
    `lm.model={backend: tinylm},{backend: smollm2}`."""
    parts, depth, current = [], 0, ""
    for ch in values:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def points(grid: dict[str, list[Any]]) -> list[Point]:
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        pairs = tuple(zip(keys, combo))
        out.append(Point(",".join(f"{k}={_show(v)}" for k, v in pairs), pairs))
    return out


def _show(value: Any) -> str:
    return str(value) if not isinstance(value, (list, dict)) else yaml.safe_dump(value, default_flow_style=True).strip()


def apply(data: dict, overrides: tuple[tuple[str, Any], ...]) -> dict:
    """A copy of raw params with dotted keys set (validation happens afterwards, naming the key)."""
    out = copy.deepcopy(data)
    for key, value in overrides:
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise config.ConfigError(f"--set {key}: {part} is not a section")
        node[last] = value
    return out


@dataclass(frozen=True)
class SweepPlan:
    name: str
    plan: Plan
    points: tuple[Point, ...]
    reports: dict[str, Path]  # point name -> that point's summary report directory
    invalid: dict[str, str]  # point name -> why its params were refused


def build(name: str, pipeline: str, raw: dict, grid: dict[str, list[Any]]) -> SweepPlan:
    """Plan every valid point under sweeps/<name>/<point>/, merging jobs identical across points."""
    if not name or slug(name) != name:
        raise config.ConfigError(f"sweep name {name!r}: use letters, digits, '.', '_' or '-'")
    if not grid:
        raise config.ConfigError("a sweep needs at least one --set key=value[,value...]")
    jobs: list[Job] = []
    reports, invalid = {}, {}
    canonical: dict[tuple, Path] = {}  # job identity -> the output path it was first planned at
    summary_of: dict[Path, str] = {}  # a summary's output -> the point that planned it
    grid_points = points(grid)
    for point in grid_points:
        try:
            cfg = config.parse(apply(raw, point.overrides), f"params.yaml + {point.name}")
        except config.ConfigError as exc:
            invalid[point.name] = str(exc)
            continue
        prefix = SWEEPS / name / slug(point.name)
        moved: dict[Path, Path] = {}
        for job in plan(cfg, pipeline).jobs:
            inputs = tuple((n, moved.get(p, prefix / p)) for n, p in job.inputs)
            key = (job.step_name, json.dumps(job.params.model_dump(mode="json"), sort_keys=True), job.seed, job.gen,
                   job.variant, inputs)
            if key in canonical:
                moved[job.output] = canonical[key]
                if job.step == "summary":  # every job of this point is another point's: it measures nothing new
                    invalid[point.name] = (f"the same jobs as {summary_of[canonical[key]]}: the {pipeline} pipeline "
                                           f"does not depend on what {point.name} changes")
                continue
            new = replace(job, inputs=inputs, output=prefix / job.output, point=slug(point.name),
                          files=tuple((f, prefix / dest) for f, dest in job.files))
            canonical[key] = moved[job.output] = new.output
            jobs.append(new)
            if job.step == "summary":
                reports[point.name] = new.output
                summary_of[new.output] = point.name
    refused_by_all = len(invalid) == len(grid_points)
    unknown = [k for k in grid if refused_by_all and all(f"{k}: Extra inputs are not permitted" in why
                                                          for why in invalid.values())]
    if unknown:  # a typo, not a bad point: one line, not one refusal per value
        raise config.ConfigError(f"--set {unknown[0]}: not a params key (every point refuses it; see params.yaml "
                                 f"for the keys)")
    same = [p for p, why in invalid.items() if why.startswith("the same jobs as ")]
    if len(grid_points) > 1 and len(reports) == 1 and len(same) == len(grid_points) - 1:
        raise config.ConfigError(_varies_nothing(pipeline, grid))
    return SweepPlan(name, Plan(pipeline, tuple(jobs)), tuple(grid_points), reports, invalid)


def _varies_nothing(pipeline: str, grid: dict[str, list[Any]]) -> str:
    """Every point plans the same jobs: the sweep would run the pipeline once and compare nothing (`sublim sweep
    --set mlp.x=1,2` ran the whole lm pipeline, the default, after one line saying so)."""
    keys = ", ".join(grid)
    other = {k.split(".", 1)[0] for k in grid} - {pipeline}
    hint = f"; did you mean `sublim sweep {sorted(other)[0]} ...`?" if len(other) == 1 else ""
    return f"--set {keys}: the {pipeline} pipeline does not depend on it (every point plans the same jobs){hint}"


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._=-" else "_" for c in text)


class EffectsParams(Section):
    name: str
    points: list[str]  # every point of the grid, in order
    finished: list[str]  # the points whose summary exists, in the order of the job's "point" inputs
    invalid: list[tuple[str, str]]  # (point, why its params were refused)


def table_job(swept: SweepPlan, finished_outputs: set[str]) -> Job:
    """The effects-table job over the points whose summary finished (the others become rows saying so)."""
    done = [(p, path) for p, path in swept.reports.items() if str(path) in finished_outputs]
    params = EffectsParams(name=swept.name, points=[p.name for p in swept.points], finished=[p for p, _ in done],
                           invalid=sorted(swept.invalid.items()))
    return Job(swept.plan.pipeline, "effects", params, SWEEPS / swept.name / "effects",
               tuple(("point", path) for _, path in done), tags=(("sweep", swept.name),))
