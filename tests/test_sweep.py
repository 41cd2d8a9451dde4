"""Sweeps: one command over a grid of traits, one DAG with shared jobs merged, one table of effects; the Dask
runner (a LocalCluster of 2 workers) gives the same digests and metrics as the sequential run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sublim import config, sweep
from tests.conftest import TINY_LM, deep_update, make_project

SWEEP_LM = deep_update(TINY_LM, {"student_inits": ["shared"]})
GRID = {"lm.trait.target": ["owl", "cat", "unicorn"]}


def _raw(over: dict | None = None) -> dict:
    return {"lm": deep_update(SWEEP_LM, over or {})}


def test_sets_parse_into_a_grid():
    assert sweep.parse_sets(["lm.trait.target=owl,cat", "lm.student.steps=10,20"]) == {
        "lm.trait.target": ["owl", "cat"], "lm.student.steps": [10, 20]}
    assert [p.name for p in sweep.points({"a": [1, 2], "b": ["x"]})] == ["a=1,b=x", "a=2,b=x"]
    models = sweep.parse_sets(["lm.model={backend: tinylm, d_model: 32},{backend: smollm2}", "lm.seeds=[0, 1]"])
    assert models == {"lm.model": [{"backend": "tinylm", "d_model": 32}, {"backend": "smollm2"}], "lm.seeds": [[0, 1]]}
    for bad in ("lm.trait.target", "=owl", "lm.trait.target="):
        with pytest.raises(config.ConfigError, match="key=value"):
            sweep.parse_sets([bad])
    with pytest.raises(config.ConfigError, match="lm.student.steps is given twice"):  # the first was dropped
        sweep.parse_sets(["lm.student.steps=10", "lm.student.steps=20"])


def test_a_point_that_changes_no_job_is_reported_not_left_unfinished():
    """A point that plans another point's jobs (its setting is not the pipeline's) is reported as the same as
    that one (a new-user audit saw it listed as "did not finish", exit 0)."""
    grid = {"mlp.model.aux_logits": [3, 5], "lm.trait.target": ["owl", "cat"]}
    swept = sweep.build("x", "mlp", {"mlp": {"seeds": [0]}}, grid)
    assert sorted(swept.reports) == ["mlp.model.aux_logits=3,lm.trait.target=owl",
                                     "mlp.model.aux_logits=5,lm.trait.target=owl"]
    assert swept.invalid["mlp.model.aux_logits=3,lm.trait.target=cat"] == (
        "the same jobs as mlp.model.aux_logits=3,lm.trait.target=owl: the mlp pipeline does not depend on what "
        "mlp.model.aux_logits=3,lm.trait.target=cat changes")


def test_a_sweep_that_varies_nothing_is_refused_before_compute():
    """`sublim sweep --set mlp.model.aux_logits=1,2` (the pipeline left at its default, lm) said one point was
    the same as the other, then ran the whole lm pipeline to compare nothing."""
    with pytest.raises(config.ConfigError, match=r"^--set mlp.model.aux_logits: the lm pipeline does not depend on "
                                                 r"it \(every point plans the same jobs\); did you mean `sublim "
                                                 r"sweep mlp \.\.\.`\?$"):
        sweep.build("x", "lm", {"lm": {"seeds": [0]}}, {"mlp.model.aux_logits": [1, 2]})
    with pytest.raises(config.ConfigError, match=r"the mlp pipeline does not depend on it"):
        sweep.build("x", "mlp", {"mlp": {"seeds": [0]}}, {"lm.trait.target": ["owl", "cat"]})
    assert list(sweep.build("x", "mlp", {}, {"mlp.model.aux_logits": [3]}).reports) == ["mlp.model.aux_logits=3"]
    with pytest.raises(config.ConfigError, match="lists 3 twice"):
        sweep.parse_sets(["mlp.model.aux_logits=3,3,5"])
    for typo in ("1,,3", "1,2,", ",1"):  # a point of value None ran, and was refused after the others had
        with pytest.raises(config.ConfigError, match=rf"--set mlp.model.aux_logits={typo}: an empty value"):
            sweep.parse_sets([f"mlp.model.aux_logits={typo}"])
    assert sweep.parse_sets(["lm.confirm.seeds=null,[7]"]) == {"lm.confirm.seeds": [None, [7]]}


def test_a_misspelt_key_is_one_error_not_one_refused_point_per_value():
    """A new-user audit's `--set mlp.model.aux_logitz=2,3` got two 'no valid point: ... Extra inputs are not
    permitted' lines; a key only some points refuse (a plug-in's own setting) still leaves the others."""
    with pytest.raises(config.ConfigError, match=r"--set mlp.model.aux_logitz: not a params key"):
        sweep.build("t", "mlp", {"mlp": {"seeds": [0]}}, {"mlp.model.aux_logitz": [2, 3]})
    swept = sweep.build("t", "mlp", {"mlp": {"seeds": [0]}}, {"mlp.model.aux_logits": [2, -1]})
    assert list(swept.reports) == ["mlp.model.aux_logits=2"] and "mlp.model.aux_logits=-1" in swept.invalid


def test_jobs_shared_by_points_run_once_and_bad_points_are_reported():
    swept = sweep.build("animals", "lm", _raw(), GRID)
    assert set(swept.reports) == {"lm.trait.target=owl", "lm.trait.target=cat"}
    assert "lm.trait.target" in swept.invalid["lm.trait.target=unicorn"]
    steps = Counter(j.step for j in swept.plan.jobs)
    seeds = len(SWEEP_LM["seeds"])
    # shared by both points: each seed's base, control teacher, its numbers and its student
    assert steps["base"] == seeds and steps["questions"] == 1
    assert steps["teacher"] == seeds * (1 + 2)  # one control + one trait teacher per animal
    assert steps["student"] == seeds * (1 + 2)
    assert steps["summary"] == 2
    ids = [j.id for j in swept.plan.jobs]
    assert len(ids) == len(set(ids))
    outputs = {j.output for j in swept.plan.jobs}
    for job in swept.plan.jobs:  # every input is produced by a job of the sweep
        assert all(p in outputs for _, p in job.inputs), job.id
    with pytest.raises(config.ConfigError, match="sweep name"):
        sweep.build("../x", "lm", _raw(), GRID)


def test_a_point_draws_what_the_plain_pipeline_draws():
    """Same job identity (and so the same random seed) with or without the sweep around it."""
    swept = sweep.build("s", "lm", _raw(), {"lm.trait.target": ["owl"]})
    from sublim.plan import plan

    plain = {j.local_id: j.rng_seed for j in plan(config.parse(_raw()), "lm").jobs}
    assert {j.local_id: j.rng_seed for j in swept.plan.jobs} == plain


def _sweep(root, runner: str):
    from flows.pipeline import run_flow, sublim_sweep

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"].update(task_runner=runner, max_workers=2 if runner == "dask" else 1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = config.load(root / "params.yaml")
    return run_flow(sublim_sweep, cfg, name="animals", grid=GRID, pipeline="lm", params=str(root / "params.yaml"))


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, prefect_server):
    root = make_project(tmp_path_factory.mktemp("sweep-seq"), {"lm": SWEEP_LM}, git=False)
    return root, _sweep(root, "thread")


def test_sweep_ends_with_one_table_of_effects(sequential):
    root, result = sequential
    assert result["missing"] == [] and set(result["invalid"]) == {"lm.trait.target=unicorn"}
    rows = json.loads((root / result["table"] / "effects.json").read_text())
    assert [r["point"] for r in rows] == ["lm.trait.target=owl", "lm.trait.target=cat", "lm.trait.target=unicorn"]
    assert [r["status"] for r in rows[:2]] == ["ok", "ok"]
    assert "lm.trait.target" in rows[2]["status"]
    for row in rows[:2]:
        assert 0 < row["p_teacher"] <= 1 and row["p_effect"] == pytest.approx(row["p_student"] - row["p_control_student"])
    assert (root / result["table"] / "effects.csv").read_text().count("\n") == 4
    assert "2/3 points finished" in result["summary"]


def test_sweep_models_are_recorded_but_not_registered(sequential):
    """A point's models are LoggedModels with their lineage, but the registry's names and aliases stay the
    pipelines' (a sweep took `sublim-lm-student-trait-shared@newest` for a point's student)."""
    from sublim.lineage.record import SWEEP_OUTPUTS, client, tracking_uri

    assert Path(SWEEP_OUTPUTS) == sweep.SWEEPS
    root, _ = sequential
    mlflow = client(tracking_uri(root))
    exp = mlflow.get_experiment_by_name("sublim-lm")
    paths = {m.tags.get("sublim.path", "") for m in mlflow.search_logged_models([exp.experiment_id])}
    assert any(p.startswith("sweeps/animals/lm.trait.target=cat/") for p in paths)
    assert mlflow.search_registered_models() == []


@pytest.mark.slow  # a Dask cluster and a second sweep: `make test-slow`
def test_dask_runner_gives_the_sequential_digests_and_metrics(sequential, tmp_path):
    root, first = sequential
    other = make_project(tmp_path / "sweep-dask", {"lm": SWEEP_LM}, git=False)
    second = _sweep(other, "dask")
    assert second["missing"] == []
    assert {k: o.digest for k, o in second["outcomes"].items()} == {k: o.digest for k, o in first["outcomes"].items()}
    table = lambda r: json.loads((r / "sweeps/animals/effects/effects.json").read_text())  # noqa: E731
    assert table(other) == table(root)
