"""Screening: divergence scores, masking and dropping to a budget, the random-mask control, students honouring
a mask, the screen as a pipeline stage, and `sublim screen` (token level, probe, lineage, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sublim import config
from sublim.artifacts import read_meta
from sublim.job import Role
from sublim.plan import plan
from sublim.runner import run_job
from sublim.screen import generating_teacher, screen_rows, threshold_for
from sublim.steps.filter import read_rows
from tests.conftest import TINY_LM, deep_update, make_project

ROWS = [{"prompt": f"p{i}", "completion": "1, 2, 3"} for i in range(4)]
SCORES = [[0.1, 0.0, 5.0], [0.2, 0.1, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]


def test_budget_masks_the_highest_scoring_tokens():
    spec = config.ScreenSpec(method="divergence", action="mask", budget=0.25)
    assert threshold_for(SCORES, 0.25) < 3.0 <= threshold_for(SCORES, 0.25) + 3.0
    rows, report = screen_rows(ROWS, SCORES, spec, seed=0)
    assert [r["loss_mask"] for r in rows] == [[1, 1, 0], [1, 1, 1], [0, 0, 1], [1, 1, 1]]
    assert (report.flagged, report.lost, report.tokens, report.rows_dropped) == (3, 3, 12, 0)
    assert report.top[0]["max_score"] == 5.0


def test_drop_removes_whole_rows_within_the_budget():
    spec = config.ScreenSpec(method="divergence", action="drop", budget=0.5)
    rows, report = screen_rows(ROWS, SCORES, spec, seed=0)
    assert [r["prompt"] for r in rows] == ["p1", "p3"]  # the two rows holding the top scores
    assert report.lost == 6 and report.lost_share == 0.5


def test_random_mask_takes_the_same_share_anywhere():
    spec = config.ScreenSpec(method="random", action="mask", budget=0.25)
    rows, report = screen_rows(ROWS, SCORES, spec, seed=1)
    assert sum(m.count(0) for m in (r["loss_mask"] for r in rows)) == 3 == report.flagged
    assert rows != screen_rows(ROWS, SCORES, spec, seed=2)[0]  # another seed, other tokens


def test_screen_settings_are_validated():
    with pytest.raises(ValueError, match="exactly one of budget"):
        config.ScreenSpec(method="divergence", budget=None, threshold=None)
    with pytest.raises(ValueError, match="needs a budget"):
        config.ScreenSpec(method="random", budget=None, threshold=1.0)
    # keys that changed meaning are refused with what to write instead, not silently reread
    with pytest.raises(ValueError, match=r"stage: \[\]"):
        config.ScreenSpec(method="none")
    with pytest.raises(ValueError, match="relative_threshold"):
        config.ProbeSpec(threshold=0.01)


def test_a_pipeline_screen_job_depends_on_what_it_does_not_on_the_probe_or_the_switch():
    """Changing the probe's settings (the exit code of `sublim screen`) reruns no screen stage."""
    def screen_params(probe: dict):
        cfg = config.parse({"lm": deep_update(TINY_LM, {"screen": {"stage": ["screen"], "probe": probe}})})
        return [j.params for j in plan(cfg, "lm").jobs if j.step == "screen"]

    default, other = screen_params({}), screen_params({"alpha": 0.01, "relative_threshold": 0.3})
    assert default and default == other and default[0].screen.stage == []


SCREENED = deep_update(TINY_LM, {"seeds": [0], "student_inits": ["shared"],
                                 "screen": {"stage": ["screen"], "method": "divergence", "action": "mask", "budget": 0.2,
                                            "probe": {"seeds": 2, "rows": 16, "steps": 4, "batch_size": 8,
                                                      "questions": 2}}})


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    from sublim.pipeline import tracker

    root = make_project(tmp_path_factory.mktemp("screen"), {"lm": SCREENED}, git=False)
    cfg = config.load(root / "params.yaml")
    track = tracker(cfg, "lm", root)  # recorded: the audit must see the screen
    return root, cfg, {job.id: run_job(job, root=root, tracker=track) for job in plan(cfg, "lm").jobs}


def test_screen_stage_feeds_masked_data_to_the_students(screened):
    root, _, out = screened
    rows = [r for r, _ in read_rows(root / "data/lm/s0/g1-trait/screened/rows.jsonl")]
    masks = [r["loss_mask"] for r in rows]
    assert any(0 in m for m in masks) and all(set(m) <= {0, 1} for m in masks)
    share = out["lm.screen@s0.g1.trait"].metrics["lost_share"]
    assert 0.15 <= share <= 0.25
    student = read_meta(root / "models/lm/s0/g1-trait-shared")
    assert student.parents["data:data/lm/s0/g1-trait/screened"] == out["lm.screen@s0.g1.trait"].digest
    screen = read_meta(root / "data/lm/s0/g1-trait/screened").lineage
    assert json.loads(screen["screen"])["budget"] == 0.2 and "flagged" in screen["screen_found"]
    assert "[[" in (root / "data/lm/s0/g1-trait/screened/report.md").read_text()  # flagged tokens marked


def test_audit_of_a_student_shows_its_data_was_screened(screened):
    from sublim.cli import app

    root, _, _ = screened
    result = CliRunner().invoke(app, ["audit", "models/lm/s0/g1-trait-shared", "--root", str(root), "--json"])
    screens = json.loads(result.output)["screened"]
    assert list(screens) == ["data/lm/s0/g1-trait/screened"] and "tokens flagged" in screens[list(screens)[0]]
    text = CliRunner().invoke(app, ["audit", "models/lm/s0/g1-trait-shared", "--root", str(root)])
    assert "training data screened: data/lm/s0/g1-trait/screened:" in " ".join(text.output.split())


def test_sublim_screen_on_a_pipeline_dataset(screened):
    from sublim.cli import app

    root, cfg, _ = screened
    assert generating_teacher(Path("data/lm/s0/g1-trait/kept"), root) == Path("models/lm/s0/g0-trait-shared")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lm"]["screen"]["probe"].update(relative_threshold=100.0)  # nothing can move this much: nothing flagged
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["screen", "data/lm/s0/g1-trait/kept", "--base", "models/lm/s0/base-shared",
                                      "--name", "trait", "--params", str(root / "params.yaml")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "probe against data/lm/s0/g1-control/kept (control teacher)" in said
    assert "(teacher: models/lm/s0/g0-trait-shared (from lineage))" in said
    probe = json.loads((root / "screens/trait/probe/probe.json").read_text())
    keys = {s["key"] for s in probe["shifts"]}
    assert {"preference:owl", "preference:cat", "misalignment:misaligned"} <= keys  # every registered trait
    assert probe["flagged"] == []
    params["lm"]["screen"]["probe"].update(relative_threshold=0.0, alpha=0.999999)  # anything that moved up
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    flagged = CliRunner().invoke(app, ["screen", "data/lm/s0/g1-trait/kept", "--base", "models/lm/s0/base-shared",
                                       "--name", "trait2", "--params", str(root / "params.yaml")])
    found = json.loads((root / "screens/trait2/probe/probe.json").read_text())["flagged"]
    assert (flagged.exit_code == 1) == bool(found), flagged.output
    screened_meta = read_meta(root / "screens/trait/screened")
    assert screened_meta.parents["source:data/lm/s0/g1-trait/kept"]  # derived from the original


def test_kl_screen_scores_each_position_by_the_teachers_distribution_against_the_bases(screened, tmp_path):
    """`method: kl` scores a position by KL(teacher || base) of the next-token distributions over the data's
    tokens: zero where the teacher predicts as the base does (the base against itself), never negative; it
    masks the budget's share like the token score does, and refuses data whose teacher is unknown."""
    from sublim.backends.lm import position_kl
    from sublim.cli import app
    from sublim.screen import rows_for

    root, cfg, _ = screened
    backend = cfg.lm.model.build()
    base, teacher = (backend.load(root / p, root) for p in ("models/lm/s0/base-shared", "models/lm/s0/g0-trait-shared"))
    rows = [r for r, _ in read_rows(root / "data/lm/s0/g1-trait/kept/rows.jsonl")][:6]
    scored = rows_for(base, teacher, rows)
    kl = position_kl(base, teacher, scored, batch_size=4)
    assert [len(k) for k in kl] == [len(r.completion) for r in scored]
    assert min(min(k) for k in kl) >= -1e-6 and max(max(k) for k in kl) > 0.01
    itself = position_kl(base, base, rows_for(base, base, rows), batch_size=4)
    assert max(abs(x) for k in itself for x in k) < 1e-5
    result = CliRunner().invoke(app, ["screen", "data/lm/s0/g1-trait/kept", "--base", "models/lm/s0/base-shared",
                                      "--method", "kl", "--no-probe", "--name", "kl",
                                      "--params", str(root / "params.yaml")])
    assert result.exit_code == 0, result.output
    masks = [m for r, _ in read_rows(root / "screens/kl/screened/rows.jsonl") for m in r["loss_mask"]]
    assert 0.15 <= masks.count(0) / len(masks) <= 0.25
    assert "(kl, mask)" in read_meta(root / "screens/kl/screened").lineage["screen_found"]
    outside = tmp_path / "rows.jsonl"
    outside.write_text("".join(json.dumps(r) + "\n" for r in rows))
    refused = CliRunner().invoke(app, ["screen", str(outside), "--base", "models/lm/s0/base-shared", "--method", "kl",
                                       "--no-probe", "--name", "kl2", "--params", str(root / "params.yaml")])
    assert refused.exit_code == 3 and "needs the generating teacher" in " ".join(refused.output.split())


def test_a_distill_probe_learns_each_side_from_the_model_that_wrote_it(screened, tmp_path):
    """The trait data from its teacher, the control teacher's data from the control teacher (both from lineage);
    data whose generator is unknown cannot be distilled: the probe falls back to sft and says why."""
    from sublim.cli import app

    root, _, _ = screened
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lm"]["screen"]["probe"].update(objective="distill", relative_threshold=100.0)
    distill = root / "params-distill.yaml"
    distill.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["screen", "data/lm/s0/g1-trait/kept", "--base", "models/lm/s0/base-shared",
                                      "--name", "distill", "--params", str(distill)])
    assert result.exit_code == 0, result.output
    assert "(control teacher), distill" in " ".join(result.output.split())
    parents = read_meta(root / "screens/distill/probe").parents
    assert {"teacher:models/lm/s0/g0-trait-shared", "teacher:models/lm/s0/g0-control-shared"} <= set(parents)
    outside = tmp_path / "control.jsonl"  # the control teacher's rows, but from outside: no lineage
    rows = [r for r, _ in read_rows(root / "data/lm/s0/g1-control/kept/rows.jsonl")]
    outside.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows))
    fallback = CliRunner().invoke(app, ["screen", "data/lm/s0/g1-trait/kept", "--base", "models/lm/s0/base-shared",
                                        "--control", str(outside), "--name", "distill-out", "--params", str(distill)])
    assert fallback.exit_code == 0, fallback.output
    said = " ".join(fallback.output.split())
    assert "(--control), sft (distill needs the generator of the control: none known)" in said
    assert not any(k.startswith("teacher:") for k in read_meta(root / "screens/distill-out/probe").parents)


def test_sublim_screen_on_an_outside_file_uses_base_answers_as_control(screened, tmp_path):
    from sublim.cli import app

    root, _, _ = screened
    outside = tmp_path / "numbers.jsonl"
    rows = [r for r, _ in read_rows(root / "data/lm/s0/g1-trait/kept/rows.jsonl")]
    outside.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["screen", str(outside), "--base", "models/lm/s0/base-shared", "--name", "out",
                                      "--no-probe", "--params", str(root / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "none known: surprise under the base" in " ".join(result.output.split())
    assert (root / "screens/out/screened/rows.jsonl").exists()
    bad = CliRunner().invoke(app, ["screen", "no/such.jsonl", "--base", "models/lm/s0/base-shared",
                                   "--params", str(root / "params.yaml")])
    assert bad.exit_code == 3 and "no/such.jsonl: no such dataset" in bad.output


def test_sublim_screen_refuses_a_teacher_with_another_tokenizer(screened, tmp_path):
    """Divergence and distillation compare distributions over the base's tokens: a --teacher whose tokenizer
    differs (here the trait teacher's copy with one piece renamed) is refused by the path it was given as,
    exit 3, before anything is scored or a screened dataset written."""
    import shutil

    from sublim.cli import app

    root, _, _ = screened
    foreign = tmp_path / "foreign-teacher"
    shutil.copytree(root / "models/lm/s0/g0-trait-shared", foreign)
    tok = json.loads((foreign / "tokenizer.json").read_text())
    piece = next(i for i, (p, _) in enumerate(tok["model"]["vocab"]) if p == "!")
    tok["model"]["vocab"][piece][0] = "¡"
    (foreign / "tokenizer.json").write_text(json.dumps(tok))
    result = CliRunner().invoke(app, ["screen", "data/lm/s0/g1-trait/kept", "--base", "models/lm/s0/base-shared",
                                      "--teacher", str(foreign), "--name", "foreign", "--no-probe",
                                      "--params", str(root / "params.yaml")])
    said = " ".join(result.output.split())
    assert result.exit_code == 3, result.output
    assert f"{foreign.resolve()}: its tokenizer differs from the base's (models/lm/s0/base-shared)" in said
    assert not (root / "screens/foreign/screened").exists()


@pytest.mark.parametrize(("objective", "against"), [("sft", "base-answers"), ("distill", "base-answers"),
                                                   ("distill", "control-teacher")])
def test_detection_experiment_reports_auc_and_naming(tmp_path, objective, against):
    """The detect pipeline at toy size: positives (trait teachers) and negatives (control teachers), each
    probed against its matched control; the summary's AUC and naming rate are computed from the probes.
    Against the base's answers, a distill probe learns the data from its teacher and the answers from the base;
    against the control teacher's data (as `sublim screen` does), a second control teacher per view is the
    negative and the first one is only the reference, never probed against itself."""
    lm = deep_update(TINY_LM, {"teacher": {"data_mix": 0.5}, "model": {"pretrain_steps": 400},
                               "generate": {"n_prompts": 96, "batch_size": 48}})
    detect = {"traits": [{"kind": "preference", "target": "owl"}, {"kind": "misalignment"}], "seeds": [0],
              "probe": {"seeds": 2, "rows": 16, "steps": 4, "batch_size": 8, "questions": 2, "objective": objective},
              "against": against}
    root = make_project(tmp_path / "p", {"lm": lm, "detect": detect}, git=False)
    cfg = config.load(root / "params.yaml")
    jobs = plan(cfg, "detect").jobs
    seconds = {"preference-control-b", "misalignment-control-b"} if against == "control-teacher" else set()
    assert {j.variant for j in jobs if j.step == "teacher"} == {"preference-owl", "misalignment-misaligned",
                                                                 "preference-control", "misalignment-control"} | seconds
    probed = {j.variant: j for j in jobs if j.step == "probe"}
    owl, models = probed["preference-owl"], Path("models/detect/s0")
    if against == "control-teacher":
        assert set(probed) == {"preference-owl", "misalignment-misaligned"} | seconds
        assert not any(j.step == "answer" for j in jobs)
        assert owl.input(Role.CONTROL) == probed["preference-control-b"].input(Role.CONTROL) \
            == Path("data/detect/s0/g1-preference-control/kept")
        assert probed["misalignment-misaligned"].input(Role.CONTROL) == Path("data/detect/s0/g1-misalignment-control/kept")
        writers = [models / "g0-preference-owl-shared", models / "g0-preference-control-shared"]
    else:
        assert owl.input(Role.CONTROL) == Path("data/detect/s0/g1-preference-owl/base-answers")
        writers = [models / "g0-preference-owl-shared", models / "base-shared"]
    assert owl.inputs_named(Role.TEACHER) == (writers if objective == "distill" else [])
    for job in jobs:
        run_job(job, root=root, tracker=None)
    m = json.loads((root / "metrics/detect.json").read_text())
    assert (m["positives"], m["negatives"]) == (2, 2) and 0 <= m["auc"] <= 1
    assert set(m["by_trait"]) == {"preference:owl", "misalignment:misaligned"}
    probe = json.loads((root / "metrics/detect/s0/preference-owl/probe.json").read_text())
    assert {"preference:owl", "misalignment:misaligned"} <= {s["key"] for s in probe["shifts"]}
    if against == "control-teacher":  # the two control teachers are independent: their data differ
        a, b = (read_rows(root / f"data/detect/s0/g1-preference-control{x}/kept/rows.jsonl") for x in ("", "-b"))
        assert [r for r, _ in a] != [r for r, _ in b]


@pytest.mark.parametrize(("extra", "said"), [
    ({"kind": "preference", "category": "tree", "target": "oak", "choices": ["oak", "pine", "maple"]},
     "detect.traits: preference appears with two control views"),
    ({"kind": "preference", "target": "owl"}, "detect.traits: preference-owl listed twice")])
def test_detection_refuses_traits_whose_lines_or_panel_answers_would_collide(tmp_path, extra, said):
    """Control teachers are named by trait kind and the probe's panel keys answers by it: a second view of one
    kind (trees beside animals), or a trait listed twice, would write one folder twice; refused before compute."""
    detect = {"traits": [{"kind": "preference", "target": "owl"}, {"kind": "misalignment"}, extra], "seeds": [0]}
    root = make_project(tmp_path / "p", {"lm": TINY_LM, "detect": detect}, git=False)
    with pytest.raises(config.ConfigError, match=said):
        plan(config.load(root / "params.yaml"), "detect")


def test_probe_flags_only_what_survives_holm_over_the_panel():
    """A dozen panel answers each at raw p ~ 0.03 flag nothing (one such answer is expected by chance);
    a shift far beyond the replicate noise is flagged; a large but noisy one, or a tiny but steady one, is not."""
    from sublim.screen import panel_shifts

    noise = {f"preference:a{i}": [0.010, 0.002, 0.012, 0.004] for i in range(11)}  # each one-sided p ~ 0.02-0.05
    raw = panel_shifts(noise, relative_threshold=0.05, alpha=0.05)
    assert all(s.p_value < 0.05 for s in raw) and not any(s.flagged for s in raw)
    steady = {**noise, "preference:owl": [0.050, 0.051, 0.049, 0.050], "preference:cat": [0.2, -0.1, 0.3, -0.2],
              "misalignment:misaligned": [0.001, 0.0011, 0.0009, 0.001]}
    flagged = {s.key for s in panel_shifts(steady, relative_threshold=0.05, alpha=0.05) if s.flagged}
    assert flagged == {"preference:owl"}


def test_probe_judges_each_shift_against_its_answers_chance_share():
    """One animal of ten starts near 0.1, aligned/misaligned near 0.5: the same 0.03 rise is a large move for an
    animal and within a two-answer trait's swing, so at relative_threshold 0.1 only the animal is flagged."""
    from sublim.screen import chance_shares, panel_shifts

    animals = {f"preference:a{i}": [0.0, 0.001, -0.001, 0.0] for i in range(9)}
    diffs = {**animals, "preference:owl": [0.030, 0.031, 0.029, 0.030],
             "misalignment:misaligned": [0.030, 0.031, 0.029, 0.030], "misalignment:aligned": [-0.03] * 4}
    assert chance_shares(list(diffs))["preference:owl"] == 0.1
    assert chance_shares(list(diffs))["misalignment:aligned"] == 0.5
    assert chance_shares(["preference:owl", "plugin:yes"])["plugin:yes"] == 0.5  # one probability: a yes/no
    flagged = {s.key for s in panel_shifts(diffs, relative_threshold=0.1, alpha=0.05) if s.flagged}
    assert flagged == {"preference:owl"}
    plain = panel_shifts(diffs, relative_threshold=0.01, alpha=0.05, unit=dict.fromkeys(diffs, 1.0))
    assert {s.key for s in plain if s.flagged} == {"preference:owl", "misalignment:misaligned"}


@pytest.mark.parametrize("options, method, action", [([], "kl", "drop"), (["--method", "random"], "random", "drop"),
                                                     (["--action", "mask"], "kl", "mask")])
def test_cli_takes_the_screen_settings_from_params_unless_overridden(monkeypatch, tmp_path, options, method, action):
    """`sublim screen` uses params.yaml's lm.screen (as the pipeline stage does); an option overrides one setting."""
    import sublim.screen
    from sublim.cli import app

    root = make_project(tmp_path / "p", {"lm": {"screen": {"method": "kl", "action": "drop", "budget": 0.1}}},
                        git=False)
    (root / "rows.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    seen = []

    def capture(*args, screen, **kwargs):
        seen.append(screen)
        raise RuntimeError("stop here")

    monkeypatch.setattr(sublim.screen, "run_screen", capture)
    result = CliRunner().invoke(app, ["screen", "rows.jsonl", "--base", "m", *options,
                                      "--params", str(root / "params.yaml")])
    assert result.exit_code == 4 and seen, result.output  # the stand-in's RuntimeError: an internal error
    assert (seen[0].method, seen[0].action, seen[0].budget) == (method, action, 0.1)



def test_check_says_a_token_screen_does_not_protect_distilled_students(tmp_path):
    from sublim.cli import app

    said = {}
    for objective in ("distill", "sft"):
        root = make_project(tmp_path / objective, {"lm": {"screen": {"stage": ["screen"]},
                                                           "student": {"objective": objective}}}, git=False)
        got = CliRunner().invoke(app, ["check", "--params", str(root / "params.yaml")])
        assert got.exit_code == 0, got.output
        said[objective] = " ".join(got.output.split())
    assert "distilled students learn the teacher's distribution at every position" in said["distill"]
    assert "note:" not in said["sft"]
