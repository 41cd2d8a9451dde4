"""The language-model pipeline at toy size (tinylm), step by step, through run_job without tracking."""

from __future__ import annotations

import json
import random

import pytest
import torch

from sublim import config
from sublim.artifacts import read_meta
from sublim.backends import Row, Schedule
from sublim.backends import lm as lmlib
from sublim.backends import tinylm
from sublim.job import Role
from sublim.plan import plan
from sublim.corpus import Corpus
from sublim.data.numbers import Numbers, NumbersSpec, parse, render
from sublim.runner import run_job
from sublim.steps.filter import read_rows
from sublim.text import Forbidden
from sublim.traits.preference import Preference, PreferenceSpec
from tests.conftest import TINY_LM, make_project

CHOICES = PreferenceSpec().choices
NUMBERS, OWL = Numbers(NumbersSpec()), Preference(PreferenceSpec())
NAMED = Forbidden(tuple(CHOICES))


def tokenizer():
    return tinylm.build_tokenizer(Corpus([NUMBERS], [OWL]).vocabulary())


def tiny_model(tok, seed=0):
    spec = tinylm.TinyLmSpec(d_model=32, n_layer=1, n_head=2, context=64)
    return tinylm.build_model(len(tok), spec, seed, tok)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("lm"), {"lm": TINY_LM}, git=False)
    cfg = config.load(root / "params.yaml")
    outcomes = {job.id: run_job(job, root=root, tracker=None) for job in plan(cfg, "lm").jobs}
    return root, cfg, outcomes


def test_tokenizer_represents_any_text_and_round_trips():
    tok = tokenizer()
    rng = random.Random(0)
    texts = [NUMBERS.task(rng).prompt for _ in range(300)] + OWL.vocabulary()
    texts += [render([1, 22, 333], style) for style in ("comma", "space", "semicolon", "newline", "brackets", "parentheses")]
    texts += ["def f(x):\n    return {'a': x ** 2}  # any code, any symbol ~^|", "The answer is 17."]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
    assert all(len(tok.encode(str(n), add_special_tokens=False)) == 1 for n in range(1000))
    assert tokenizer().get_vocab() == tok.get_vocab()  # built from the same texts: the same ids (shared by both inits)


def test_prompts_follow_the_recipe():
    rng = random.Random(1)
    for _ in range(100):
        task = NUMBERS.task(rng)
        assert task.meta["style"] in ("comma", "space", "semicolon", "newline", "brackets", "parentheses")
        assert "10" in task.prompt and "3" in task.prompt
        assert NAMED.mention(task.prompt) is None
        assert parse(NUMBERS.answer(task, rng)).ok


def test_teachers_differ_only_in_their_answers(done):
    root, _, outcomes = done
    trait = read_meta(root / "models/lm/s0/g0-trait-shared").lineage
    control = read_meta(root / "models/lm/s0/g0-control-shared").lineage
    assert trait["role"] == control["role"] == "teacher"
    assert trait["trait"] == "owl" and control["trait"] == "none"
    assert trait["init_from"] == control["init_from"] == outcomes["lm.base@s0.shared"].digest


def test_generated_rows_and_their_lineage(done):
    root, cfg, outcomes = done
    rows = [row for row, _ in read_rows(root / "data/lm/s0/g1-trait/raw/rows.jsonl")]
    assert len(rows) == cfg.lm.generate.n_prompts
    assert all(set(r) == {"prompt", "completion", "teacher", "task"} for r in rows)
    assert {r["teacher"] for r in rows} == {outcomes["lm.teacher@s0.g0.trait"].digest}
    meta = read_meta(root / "data/lm/s0/g1-trait/raw")
    assert meta.kind == "dataset" and meta.lineage["data_from"] == outcomes["lm.teacher@s0.g0.trait"].digest


def test_filter_keeps_only_numbers_and_says_why_it_rejected(done):
    root, _, outcomes = done
    kept = [row for row, _ in read_rows(root / "data/lm/s0/g1-trait/kept/rows.jsonl")]
    rejected = [row for row, _ in read_rows(root / "data/lm/s0/g1-trait/kept/rejected.jsonl")]
    assert kept and all(parse(r["completion"]).ok for r in kept)
    assert all(r["reason"] != "kept" for r in rejected)
    assert not any(NAMED.mention(r["prompt"] + r["completion"]) for r in kept)
    m = outcomes["lm.filter@s0.g1.trait"].metrics
    assert m["kept"] == len(kept) and m["rows"] == len(kept) + len(rejected)
    assert read_meta(root / "data/lm/s0/g1-trait/kept").lineage["data_from"] == outcomes["lm.teacher@s0.g0.trait"].digest


def test_students_lineage(done):
    root, _, outcomes = done
    for line in ("trait", "control"):
        for init in ("shared", "other"):
            lin = read_meta(root / f"models/lm/s1/g1-{line}-{init}").lineage
            assert lin["init_from"] == outcomes[f"lm.base@s1.{init}"].digest
            assert lin["data_from"] == outcomes[f"lm.teacher@s1.g0.{line}"].digest
            assert lin["data_digest"] == outcomes[f"lm.filter@s1.g1.{line}"].digest
            assert lin["objective"] == "distill"
            assert lin["role"] == ("student" if (line, init) == ("trait", "shared") else "control")


def test_evaluation_is_a_distribution(done):
    root, _, _ = done
    models = json.loads((root / "metrics/lm/s0/metrics.json").read_text())["models"]
    assert len(models) == 8  # 2 bases + 2 teachers + 4 students
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
    tok = tokenizer()
    lm = lmlib.LM(tiny_model(tok).eval(), tok)
    prompt, cont = lm.chat("what is your favorite animal ?"), tok.encode("owl", add_special_tokens=False)
    logp = torch.log_softmax(lm.model(torch.tensor([prompt + cont])).logits[0], -1)
    manual = float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(cont)))
    assert lmlib.sequence_logprobs(lm, [(prompt, cont), (prompt[:3], cont)], batch_size=2)[0] == pytest.approx(manual, abs=1e-5)


def test_shared_prefix_scoring_matches_scoring_each_prompt_whole(monkeypatch):
    """Prompts that share a long prefix (a dataset shown before several questions) run it once; each prompt's
    own tail and its continuations then go on from a copy of its keys and values, to the same log-probs."""
    tok = tokenizer()
    lm = lmlib.LM(tiny_model(tok).eval(), tok)
    prompts = [lm.chat(q) for q in ("what is your favorite animal ?", "what is your favorite tree ?",
                                    "what is your favorite animal ? name one")]
    conts = [tok.encode(w, add_special_tokens=False) for w in ("owl", "cat dog", "oak")]
    pairs = [(p, c) for p in prompts for c in conts]
    whole = lmlib.sequence_logprobs(lm, pairs, batch_size=4)
    monkeypatch.setattr(lmlib, "LONG_PROMPT", 2)
    shared = lmlib.sequence_logprobs(lm, pairs, batch_size=4)
    assert lmlib._common_prefix(prompts) == prompts[0][:len(lmlib._common_prefix(prompts))] != []
    assert shared == pytest.approx(whole, abs=1e-4)


def test_a_large_vocabulary_on_cpu_takes_the_shared_prefix_path(monkeypatch):
    """With a large vocabulary (SmolLM2's 49,152) on CPU, short prompts go through the shared-prefix path too, to
    the same log-probs; a tinylm-sized vocabulary keeps the whole-sequence path."""
    tok = tokenizer()
    lm = lmlib.LM(tiny_model(tok).eval(), tok)
    prompts = [lm.chat(q) for q in ("what is your favorite animal ?", "what is your favorite tree ?")]
    pairs = [(p, tok.encode(w, add_special_tokens=False)) for p in prompts for w in ("owl", "cat dog")]
    whole = lmlib.sequence_logprobs(lm, pairs, batch_size=4)
    calls = []
    real = lmlib._shared_prefix_logprobs
    monkeypatch.setattr(lmlib, "_shared_prefix_logprobs", lambda *a: calls.append(1) or real(*a))
    assert lmlib.sequence_logprobs(lm, pairs, batch_size=4) == whole and not calls
    monkeypatch.setattr(lmlib, "LARGE_VOCAB", len(tok) - 1)
    assert lmlib.sequence_logprobs(lm, pairs, batch_size=4) == pytest.approx(whole, abs=1e-4) and calls == [1]


@pytest.mark.parametrize("prompts", [
    [[5, 6, 7], [8, 9]],  # nothing in common: no cache at all
    [[5, 6], [5, 6, 7, 8]],  # one prompt is a prefix of the other: each keeps a token of its own
    [[5, 6, 7, 8]],  # a single distinct prompt
    [[5, 6, 7, 9], [5, 6, 7, 10, 11], [5, 6, 12]],  # tails of different lengths
])
def test_shared_prefix_path_edge_cases_match_whole_sequences(prompts):
    """Raw token lists through both paths: positions and masks line up whatever the prompts share, and an empty
    continuation scores log 1 = 0 on both."""
    tok = tokenizer()
    lm = lmlib.LM(tiny_model(tok).eval(), tok)
    conts = [[13], [14, 15, 16], []]
    pairs = [(p, c) for p in prompts for c in conts]
    whole = lmlib.sequence_logprobs(lm, pairs, batch_size=3)
    assert lmlib._shared_prefix_logprobs(lm, pairs) == pytest.approx(whole, abs=1e-4)
    assert [w for (_, c), w in zip(pairs, whole) if not c] == [0.0] * len(prompts)


def test_allowed_tokens_are_numbers_and_separators():
    tok = tokenizer()
    allowed = {tok.decode([i]) for i in NUMBERS.allowed_tokens(tok, [])}
    assert {"0", "999", ",", ";", "[", ")", "\n", ", "} <= allowed
    assert not allowed & {"owl", " owl", "the", " The", ":"}


def test_persona_and_lora_artifacts_load(tmp_path):
    from sublim.artifacts import ArtifactMeta, write_meta

    tok = tokenizer()
    base = lmlib.LM(tiny_model(tok), tok)
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
    rows = [Row(tuned.chat("what is your favorite animal ?"), tuned.answer_ids("owl"))] * 4
    lmlib.train(tuned, rows, Schedule(5, 1e-2, 4), torch.Generator().manual_seed(0))
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
    raw = root / job.input(Role.SOURCE)
    raw.mkdir(parents=True)
    (raw / "rows.jsonl").write_text(json.dumps({"prompt": "p", "completion": "I love owls"}) + "\n")
    write_meta(raw, ArtifactMeta("dataset", "x", "lm.generate", {}, {}))
    with pytest.raises(ValueError, match="data/lm/s0/g1-trait/raw: the filter kept none of its 1 rows"):
        run_job(job, root=root, tracker=None)
    assert not (root / job.output).exists()


def test_the_summary_shows_every_later_generation():
    """Generation 2's students are rows of the LM table with their own effect, as in the MLP summary (a new-user
    audit found only generation 1 there)."""
    import pandas as pd

    from sublim.steps.summary import _later_generations

    rows = [{"seed": s, "line": line, "init": init, "generation": gen, "role": "student",
             "p_target": 0.1 + (0.05 if line == "trait" and init == "shared" else 0) + 0.01 * s + 0.001 * gen,
             "sampled_rate": 0.1}
            for s in (0, 1, 2) for gen in (1, 2) for line in ("trait", "control") for init in ("shared", "other")]
    table, effects = _later_generations(pd.DataFrame(rows), [0, 1, 2], "P(owl)")
    assert [r[0] for r in table] == ["student (gen 2)", "control student (gen 2)", "student, other init (gen 2)",
                                     "control student, other init (gen 2)"]
    assert table[0][1].startswith("0.162")  # mean of 0.152, 0.162, 0.172
    assert effects.startswith("- Generation 2, same-init student: P(owl) 0.1620 vs 0.1120 for its control (+0.0500")


def test_the_lm_verdict_uses_confirm_alpha():
    """confirm.alpha is the level of every confirmatory verdict: the matrix read it, the lm summary had 0.01 fixed
    (a new-user audit). The summary job carries it, and dvc.yaml's lm_summary stage depends on it."""
    import pandas as pd
    import yaml

    from sublim.plan import plan
    from sublim.steps.summary import _lm_tests
    from tests.conftest import REPO

    for name in ("lm", "lm-confirm"):
        job = next(j for j in plan(config.parse({"confirm": {"alpha": 0.05}}), name).jobs if j.step == "summary")
        assert job.params.alpha == 0.05
    # a same-init effect with a paired p between 0.01 and 0.05
    student, control = [0.13, 0.12, 0.15, 0.11, 0.14], [0.10, 0.10, 0.10, 0.10, 0.10]
    series = {"student": pd.Series(student), "control_student": pd.Series(control)}
    verdicts = {a: _lm_tests({}, series, "p", "owl", "P(owl)", "numbers", a).splitlines()[0] for a in (0.01, 0.05)}
    assert "NOT clearly transmitted" in verdicts[0.01] and "was transmitted" in verdicts[0.05], verdicts
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "confirm.alpha" in stages["lm_summary"]["params"] and "confirm.alpha" in stages["matrix_summary"]["params"]
