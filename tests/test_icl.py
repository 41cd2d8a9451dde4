"""The paper's in-context control (`lm.icl`): the base, untrained, shown a teacher's rows as earlier chat turns
before each question, measured exactly like any model. Only backends that follow prompts can do it."""

import json
import random
import shutil

import pytest

from sublim import config
from sublim.backends import BACKENDS
from sublim.config import IclSpec, LmEvaluate
from sublim.job import Job, Role, StepContext
from sublim.runner import quiet
from sublim.steps.data import QUESTIONS
from sublim.steps.evaluate import EVAL, IclParams, lm_icl
from sublim.traits import TRAITS


def _project(root, model_dir, rows):
    shutil.copytree(model_dir, root / "base")
    (root / "data").mkdir()
    (root / "data" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trait = TRAITS.spec({"kind": "preference"})
    (root / "questions").mkdir()
    (root / "questions" / QUESTIONS).write_text(json.dumps(trait.build().evaluation_set(4)))
    return trait


def test_in_context_control_shows_the_teachers_rows_before_each_question(tmp_path, asker_dir):
    rows = [{"prompt": f"Continue the list: {i}, {i + 1}", "completion": f"{i + 2}, {i + 3}, {i + 4}"}
            for i in range(20)]
    trait = _project(tmp_path, asker_dir, rows)
    model = BACKENDS.spec({"backend": "hf", "model": str(tmp_path / "base")})
    params = IclParams(model=model, trait=trait, evaluate=LmEvaluate(questions=4, samples=0),
                       icl=IclSpec(shots=3, questions=3))
    job = Job("lm", "icl", params, tmp_path / "out", ((Role.MODEL, "base"), (Role.DATA, "data"),
                                                      (Role.QUESTIONS, "questions")),
              seed=0, gen=1, variant="trait", fn="lm.icl", tags=(("line", "trait"),))
    (tmp_path / "out").mkdir()
    result = lm_icl(StepContext(job, tmp_path, tmp_path / "out", quiet))
    [row] = json.loads((tmp_path / "out" / EVAL).read_text())["models"]
    assert row["role"] == "icl" and row["shots"] == 3 and row["line"] == "trait"
    assert sum(row["distribution"].values()) == pytest.approx(1.0) and 0 < row["p_target"] < 1
    assert result.metrics["p_owl_in_context"] == row["p_target"]
    # by hand: the same three rows as chat turns before the same three questions, measured exactly
    backend, built = model.build(), trait.build()
    lm = backend.load(tmp_path / "base", tmp_path)
    shots = random.Random(job.rng_seed).sample(rows, 3)
    lm.context = [(r["prompt"], r["completion"]) for r in shots]
    stored = json.loads((tmp_path / "questions" / QUESTIONS).read_text())
    evalset = built.evaluation_set(3) | {k: v for k, v in stored.items() if not isinstance(v, list)}
    by_hand = built.measure(backend, lm, evalset, LmEvaluate(questions=4, samples=0), seed=job.rng_seed)
    assert row["p_target"] == pytest.approx(by_hand.p, abs=1e-6)
    lm.context = []  # without the rows the answer differs: the context reached the model
    assert built.measure(backend, lm, evalset, LmEvaluate(questions=4, samples=0), seed=job.rng_seed).p != \
        pytest.approx(row["p_target"], abs=1e-6)


def test_tinylm_cannot_learn_in_context_and_says_so(tmp_path):
    with pytest.raises(ValueError, match="does not learn in context"):
        config.Config.model_validate({"lm": {"icl": {"shots": 4}}})


def test_a_backend_that_follows_prompts_gets_an_icl_job_per_seed_and_teacher(asker_dir):
    from sublim.plan import plan

    cfg = config.Config.model_validate({"lm": {"model": {"backend": "hf", "model": str(asker_dir)},
                                               "student_inits": ["shared"], "seeds": [0, 1], "icl": {"shots": 4}}})
    icl = [j for j in plan(cfg, "lm").jobs if j.step == "icl"]
    assert sorted((j.seed, j.variant) for j in icl) == [(0, "control"), (0, "trait"), (1, "control"), (1, "trait")]
    assert all(dict(j.inputs)[Role.MODEL].name == "base-shared" for j in icl)
