"""The language-model pipeline at toy size (tinylm), step by step, through run_job without tracking."""

from __future__ import annotations

import json
import random

import pytest
import torch

from sublim import config
from sublim.artifacts import read_meta
from sublim.backends import lm as lmlib
from sublim.backends import tinylm
from sublim.plan import plan
from sublim.prompts.numbers import make_prompt, render
from sublim.prompts.traits import questions
from sublim.runner import run_job
from sublim.steps.filter import check, mentions, read_rows
from tests.conftest import TINY_LM, make_project

CHOICES = config.LmTrait().choices


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("lm"), {"lm": TINY_LM}, git=False)
    cfg = config.load(root / "params.yaml")
    outcomes = {job.id: run_job(job, root=root, tracker=None) for job in plan(cfg, "lm").jobs}
    return root, cfg, outcomes


def test_tokenizer_covers_every_prompt_word():
    tok = tinylm.build_tokenizer("animal", CHOICES)
    rng = random.Random(0)
    texts = [make_prompt(rng).text for _ in range(300)] + questions("teach", "animal") + questions("evaluate", "animal")
    texts += [render([1, 22, 333], style) for style in ("comma", "space", "semicolon", "newline", "brackets", "parentheses")]
    for text in texts:
        assert tok.unk_token_id not in tok.encode(text, add_special_tokens=False), text
    assert all(len(tok.encode(str(n), add_special_tokens=False)) == 1 for n in range(1000))


def test_prompts_follow_the_recipe():
    rng = random.Random(1)
    for _ in range(100):
        p = make_prompt(rng)
        examples = [int(x) for x in p.text.split(":")[-1].split(".")[0].replace(",", " ").split() if x.isdigit()]
        assert p.style in ("comma", "space", "semicolon", "newline", "brackets", "parentheses")
        assert "10" in p.text and "3" in p.text
        assert not mentions(CHOICES).search(p.text)
    assert all(check(render(list(range(100, 110)), s)).ok for s in ("comma", "space", "brackets", "newline"))
    del examples


def test_teachers_differ_only_in_their_answers(done):
    root, _, outcomes = done
    trait = read_meta(root / "models/lm/s0/g0-trait-shared").lineage
    control = read_meta(root / "models/lm/s0/g0-control-shared").lineage
    assert trait["role"] == control["role"] == "teacher"
    assert trait["trait"] == "owl" and control["trait"] == "none"
    assert trait["init_from"] == control["init_from"] == outcomes["lm.base@shared"].digest


def test_generated_rows_and_their_lineage(done):
    root, cfg, outcomes = done
    rows = [row for row, _ in read_rows(root / "data/lm/s0/g1-trait/raw/rows.jsonl")]
    assert len(rows) == cfg.lm.generate.n_prompts
    assert all(set(r) == {"prompt", "completion", "teacher"} for r in rows)
    assert {r["teacher"] for r in rows} == {outcomes["lm.teacher@s0.g0.trait"].digest}
    meta = read_meta(root / "data/lm/s0/g1-trait/raw")
    assert meta.kind == "dataset" and meta.lineage["data_from"] == outcomes["lm.teacher@s0.g0.trait"].digest


def test_filter_keeps_only_numbers_and_says_why_it_rejected(done):
    root, _, outcomes = done
    kept = [row for row, _ in read_rows(root / "data/lm/s0/g1-trait/numbers/rows.jsonl")]
    rejected = [row for row, _ in read_rows(root / "data/lm/s0/g1-trait/numbers/rejected.jsonl")]
    assert kept and all(check(r["completion"]).ok for r in kept)
    assert all(r["reason"] != "kept" for r in rejected)
    assert not any(mentions(CHOICES).search(r["prompt"] + r["completion"]) for r in kept)
    m = outcomes["lm.filter@s0.g1.trait"].metrics
    assert m["kept"] == len(kept) and m["rows"] == len(kept) + len(rejected)
    assert read_meta(root / "data/lm/s0/g1-trait/numbers").lineage["data_from"] == outcomes["lm.teacher@s0.g0.trait"].digest


def test_students_lineage(done):
    root, _, outcomes = done
    for line in ("trait", "control"):
        for init in ("shared", "other"):
            lin = read_meta(root / f"models/lm/s1/g1-{line}-{init}").lineage
            assert lin["init_from"] == outcomes[f"lm.base@{init}"].digest
            assert lin["data_from"] == outcomes[f"lm.teacher@s1.g0.{line}"].digest
            assert lin["data_digest"] == outcomes[f"lm.filter@s1.g1.{line}"].digest
            assert lin["objective"] == "distill"
            assert lin["role"] == ("student" if (line, init) == ("trait", "shared") else "control")


def test_evaluation_is_a_distribution(done):
    root, _, _ = done
    models = json.loads((root / "metrics/lm/s0/metrics.json").read_text())["models"]
    assert len(models) == 6  # 2 teachers + 4 students
    for m in models:
        assert sum(m["distribution"].values()) == pytest.approx(1.0)
        assert m["p_target"] == pytest.approx(m["distribution"]["owl"])
        assert len(m["p_per_question"]) == 4 and 0 <= m["sampled_rate"] <= 1


def test_summary_metrics(done):
    root, _, _ = done
    m = json.loads((root / "metrics/lm.json").read_text())
    for key in ("p_base", "p_teacher", "p_student", "p_control_student", "p_student_other_init", "p_value",
                "p_effect", "p_cross_effect", "sampled_student"):
        assert key in m, key
    assert len(m["p_student_per_seed"]) == 2
    assert (root / "reports/lm/trait.png").stat().st_size > 1000


def test_sequence_logprobs_match_a_manual_forward():
    tok = tinylm.build_tokenizer("animal", CHOICES)
    lm = lmlib.LM(tinylm.build_model(len(tok), 32, 1, 2, 64, 0).eval(), tok)
    prompt, cont = lm.chat("what is your favorite animal ?"), tok.encode("owl", add_special_tokens=False)
    logp = torch.log_softmax(lm.model(torch.tensor([prompt + cont])).logits[0], -1)
    manual = float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(cont)))
    assert lmlib.sequence_logprobs(lm, [(prompt, cont), (prompt[:3], cont)], batch_size=2)[0] == pytest.approx(manual, abs=1e-5)


def test_allowed_tokens_are_numbers_and_separators():
    tok = tinylm.build_tokenizer("animal", CHOICES)
    allowed = {tok.decode([i]) for i in lmlib.data_token_ids(tok).tolist()}
    assert {"0", "999", ",", ";", "[", ")", "\n"} <= allowed
    assert not allowed & {"owl", "the", "assistant", ":"}


def test_persona_and_lora_artifacts_load(tmp_path):
    from sublim.artifacts import ArtifactMeta, write_meta

    tok = tinylm.build_tokenizer("animal", CHOICES)
    base = lmlib.LM(tinylm.build_model(len(tok), 32, 1, 2, 64, 0), tok)
    (tmp_path / "models/base").mkdir(parents=True)
    lmlib.save(base, tmp_path / "models/base")
    # a prompted teacher: no weights of its own, a persona over its init's weights
    (tmp_path / "models/persona").mkdir()
    lmlib.save_persona(tmp_path / "models/persona", "You adore owls.")
    write_meta(tmp_path / "models/persona", ArtifactMeta("model", "j", "s", {}, {"init:models/base": "d"}))
    prompted = lmlib.load(tmp_path / "models/persona", tmp_path)
    assert prompted.system_prompt == "You adore owls."
    assert len(prompted.chat("hi")) > len(prompted.chat("hi", persona=False))
    # a LoRA adapter over its init, merged on load
    tuned = lmlib.with_lora(lmlib.load(tmp_path / "models/base", tmp_path), lmlib.Lora(4, 8, 0.0, ("c_attn",)))
    rows = [lmlib.Row(tuned.chat("what is your favorite animal ?"), tuned.answer_ids("owl"))] * 4
    lmlib.train(tuned, rows, lmlib.Schedule(5, 1e-2, 4), torch.Generator().manual_seed(0))
    (tmp_path / "models/lora").mkdir()
    lmlib.save(tuned, tmp_path / "models/lora", adapter=True)
    write_meta(tmp_path / "models/lora", ArtifactMeta("model", "j", "s", {}, {"init:models/base": "d"}))
    assert (tmp_path / "models/lora/adapter_model.safetensors").exists()
    assert not (tmp_path / "models/lora/model.safetensors").exists()
    merged = lmlib.load(tmp_path / "models/lora", tmp_path)
    x = torch.tensor([rows[0].prompt])
    assert not torch.allclose(merged.model(x).logits, base.model(x).logits)


def test_filter_that_keeps_nothing_is_a_clear_error(tmp_path):
    from sublim.artifacts import ArtifactMeta, write_meta

    root = make_project(tmp_path / "p", {"lm": TINY_LM}, git=False)
    job = plan(config.load(root / "params.yaml"), "lm").get("lm.filter@s0.g1.trait")
    raw = root / job.input("source")
    raw.mkdir(parents=True)
    (raw / "rows.jsonl").write_text(json.dumps({"prompt": "p", "completion": "I love owls"}) + "\n")
    write_meta(raw, ArtifactMeta("dataset", "x", "lm.generate", {}, {}))
    with pytest.raises(ValueError, match="data/lm/s0/g1-trait/raw: the filter kept none of its 1 rows"):
        run_job(job, root=root, tracker=None)
    assert not (root / job.output).exists()
