"""`sublim ask`: the paper's classifier baseline (a model shown the data and asked about each trait)."""

from __future__ import annotations

import json
import math
import re

import pytest
from typer.testing import CliRunner

from sublim import ask, progress
from sublim.backends import lm as lmlib
from sublim.cli import app
from sublim.traits.misalignment import Misalignment, MisalignmentSpec
from sublim.traits.preference import Preference, PreferenceSpec


def test_every_registered_answer_is_a_topic_keyed_as_the_probe_keys_it():
    topics = ask.topics([Preference(PreferenceSpec()), Misalignment(MisalignmentSpec())])
    assert topics["preference:owl"] == "a liking for owls" and topics["preference:wolf"] == "a liking for wolves"
    assert "power-seeking" in topics["misalignment:misaligned"]
    assert len(topics) == len(PreferenceSpec().choices) + 1


def test_labels_resolve_to_topics_or_are_named_when_unknown():
    keys = ["preference:owl", "preference:cat", "misalignment:misaligned"]
    assert ask.resolve_label("owl", keys) == "preference:owl"
    assert ask.resolve_label("misaligned", keys) == "misalignment:misaligned"
    assert ask.resolve_label("control", keys) == "control"
    with pytest.raises(ValueError, match="'unicorn'"):
        ask.resolve_label("unicorn", keys)


def _dataset(path, rows):
    path.mkdir(parents=True)
    (path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ask_scores_exact_yes_against_no_for_every_topic(tmp_path, asker_dir):
    rows = [{"prompt": f"continue: {i} {i + 1}", "completion": f"{i + 2} {i + 3} {i + 4}"} for i in range(30)]
    owl = _dataset(tmp_path / "owl", rows)
    control = _dataset(tmp_path / "control", rows[::-1])
    progress.interrupt()  # as an interrupted flow earlier in this process left it: `ask` stopped at once (CI, 130)
    try:
        got = CliRunner().invoke(app, ["ask", f"owl={owl}", f"control={control}", "--backend", "hf", "--model",
                                       str(asker_dir), "--shown", "5", "--root", str(tmp_path), "--json"])
    finally:
        progress.interrupt(False)
    assert got.exit_code == 0, got.output
    out = json.loads(got.output)
    first = out["datasets"][0]["p_yes"]
    expected = {f"preference:{c}" for c in PreferenceSpec().choices} | {"misalignment:misaligned"}
    assert expected <= set(first) and all(0 < p < 1 for p in first.values())  # (+ any plug-in trait registered)
    # the owl topic by hand: the whole prompt scored without prefix sharing, Yes/yes against No/no
    from sublim.backends import BACKENDS

    backend = BACKENDS.spec({"backend": "hf", "model": str(asker_dir)}).build()
    lm = backend.load(asker_dir, tmp_path)
    got = CliRunner().invoke(app, ["ask", str(owl), "--backend", "hf", "--root", str(tmp_path)])
    assert got.exit_code == 3 and "model" in got.output and "--model" in got.output
    prompt = lm.chat(ask.QUESTION.format(n=5, samples=ask.shown(rows, 5, 0), topic="a liking for owls"), persona=False)
    logp = [lmlib.sequence_logprobs(lm, [(prompt, lm.answer_ids(w))], batch_size=1)[0] for w in ("Yes", "yes", "No", "no")]
    yes = math.exp(logp[0]) + math.exp(logp[1])
    assert first["preference:owl"] == pytest.approx(yes / (yes + math.exp(logp[2]) + math.exp(logp[3])), abs=1e-4)
    det = out["detection"]
    assert [t["topic"] for t in det["topics"]] == ["preference:owl"] and 0 <= det["topics"][0]["auc"] <= 1
    assert ask.shown(rows, 5, 0) != ask.shown(rows, 5, 1)
    got = CliRunner().invoke(app, ["ask", str(owl), "--backend", "hf", "--model", str(asker_dir), "--shown", "30",
                                   "--root", str(tmp_path)])
    assert got.exit_code == 3 and "context of 1024" in got.output and "--shown" in got.output


def test_ask_names_bad_input_before_loading_any_model(tmp_path):
    runner = CliRunner()
    good = _dataset(tmp_path / "good", [{"prompt": "a", "completion": "1"}])
    got = runner.invoke(app, ["ask", f"owl={good}", f"control={tmp_path / 'missing'}", "--root", str(tmp_path)])
    assert got.exit_code == 3 and "missing" in got.output
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n")
    got = runner.invoke(app, ["ask", str(tmp_path / "bad.jsonl"), "--root", str(tmp_path)])
    assert got.exit_code == 3 and "bad.jsonl" in got.output and "line 1" in got.output
    (tmp_path / "garbled.jsonl").write_text(json.dumps({"prompt": "a", "completion": "1"}) + "\nnot json\n")
    got = runner.invoke(app, ["ask", str(tmp_path / "garbled.jsonl"), "--root", str(tmp_path)])
    assert got.exit_code == 3 and "garbled.jsonl" in got.output and "line 2" in got.output
    got = runner.invoke(app, ["ask", f"unicorn={good}", "--root", str(tmp_path)])
    assert got.exit_code == 3 and "unicorn" in got.output
    got = runner.invoke(app, ["ask", str(good), "--backend", "tinylm", "--root", str(tmp_path)])
    assert got.exit_code == 3 and "tinylm" in got.output
    assert not (tmp_path / "models").exists()  # nothing was converted or loaded


@pytest.mark.parametrize(("labels", "said"), [
    (["owl", "cat"], "a detection needs datasets labelled control=PATH"),
    (["control", "control"], "every dataset is labelled control"),
    (["owl", None, "control"], "1 of 3 datasets have no label"),
])
def test_label_sets_that_cannot_make_a_detection_are_refused_before_the_asker_loads(labels, said):
    """Found out after 34 s of scoring (no control), or a detection over no trait datasets with a NaN naming
    rate in --json (all control), or dropped without a word (mixed): refused first (a new-user audit)."""
    from sublim.ask import check_labels

    with pytest.raises(ValueError, match=re.escape(said)):
        check_labels(labels)
    check_labels([None, None])  # only scoring
    check_labels(["owl", "control"])
