"""docs/lineage.md's worked example, end to end at toy size: a sublim owl teacher generates numbers; a plain
transformers script outside sublim fine-tunes the teacher's base on them; the result is recorded, audited
(exit 1: the owl teacher shares its init) and given a model card; the experiment's picture shows it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublim import config
from sublim.cli import app
from sublim.lineage.record import Tracker
from sublim.plan import plan
from sublim.runner import run_job
from tests.conftest import TINY_LM, make_project

# the script of the worked example: plain transformers, no sublim import
FINETUNE = '''
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

base, data, out = sys.argv[1:4]
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base)
rows = [json.loads(line) for line in open(f"{data}/rows.jsonl")]
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
model.train()
for row in rows[:16]:
    prompt = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False)
    ids = list(prompt) + tok.encode(row["completion"], add_special_tokens=False) + [tok.eos_token_id]
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, :len(prompt)] = -100  # learn the completion only
    model(input_ids=x, labels=labels).loss.backward()
    opt.step()
    opt.zero_grad()
model.save_pretrained(out)
tok.save_pretrained(out)
'''
JOBS = ("lm.base@s0.shared", "lm.teacher@s0.g0.trait", "lm.generate@s0.g1.trait", "lm.filter@s0.g1.trait")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("example") / "p", {"lm": {**TINY_LM, "seeds": [0]}}, git=False)
    jobs = plan(config.load(root / "params.yaml"), "lm")
    tracker = Tracker(root, "sublim-lm")
    for job_id in JOBS:
        run_job(jobs.get(job_id), root=root, tracker=tracker)
    (root / "finetune.py").write_text(FINETUNE)
    done = subprocess.run([sys.executable, "finetune.py", "models/lm/s0/base-shared", "data/lm/s0/g1-trait/kept",
                           "outside/student"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def sublim(root: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--root", str(root)])


def test_the_worked_example(example, monkeypatch):
    root = example
    monkeypatch.chdir(root)
    recorded = sublim(root, "record", "model", "outside/student", "--init-from", "models/lm/s0/base-shared",
                      "--trained-on", "data/lm/s0/g1-trait/kept")
    assert recorded.exit_code == 0 and "new node" in recorded.output, recorded.output
    audit = sublim(root, "audit", "outside/student")
    assert audit.exit_code == 1, audit.output
    text = " ".join(audit.output.split())
    assert "at-risk path: models/lm/s0/g0-trait-shared =data[" in text and "shared init]=> outside/student" in text
    assert "at risk: owl" in text
    card = sublim(root, "card", "outside/student", "--out", "outside/student/README.md")
    assert card.exit_code == 0, card.output
    written = (root / "outside/student/README.md").read_text()
    assert written.startswith("---\nbase_model: models/lm/s0/base-shared\nbase_model_relation: finetune\n")
    assert "## Training data origins" in written and "**at risk: owl**" in written
    assert "models/lm/s0/g0-trait-shared" in written
    picture = sublim(root, "lineage", "graph", "sublim-lm", "--out", "reports/lineage/lm")
    assert picture.exit_code == 0, picture.output
    assert '["recorded outside sublim"]' in (root / "reports/lineage/lm/lineage.mmd").read_text()
    assert (root / "reports/lineage/lm/lineage.png").stat().st_size > 10000


def test_the_pipeline_models_never_audit_as_unknown(example):
    report = json.loads(sublim(example, "audit", "models/lm/s0/g0-trait-shared", "--json").output)
    assert report["unknowns"] == [] and report["verdict"] == "at risk"  # the teacher itself carries owl
    base = sublim(example, "audit", "models/lm/s0/base-shared", "--json")
    assert base.exit_code == 0 and json.loads(base.output)["unknowns"] == []
