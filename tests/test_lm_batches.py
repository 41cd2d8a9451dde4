"""Rows of mixed lengths run in length groups on CPU: the same logits, in the rows' own order, with less padding."""

from __future__ import annotations

import random

import pytest
import torch

from sublim.backends import Row, lm
from sublim.backends.tinylm import TinyLmSpec, build_model, build_tokenizer


def _padded(lengths, groups):
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


@pytest.mark.parametrize("seed", range(5))
def test_length_groups_cover_every_row_once_and_cut_padding(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(8, 20), rng.randint(60, 90)]) for _ in range(32)]  # questions and lists
    groups = lm.length_groups(lengths, pass_cost=400)
    assert sorted(i for g in groups for i in g) == list(range(32))
    one = _padded(lengths, [list(range(32))])
    # the chosen split is never worse than one pass, counting each pass's cost
    assert _padded(lengths, groups) + 400 * len(groups) <= one + 400
    assert 1 < len(groups) and _padded(lengths, groups) < 0.75 * one  # bimodal lengths: at least a quarter saved


def test_one_group_in_the_rows_order_when_passes_are_free_to_pad():
    assert lm.length_groups([5, 50, 7], pass_cost=float("inf")) == [[0, 1, 2]]
    assert lm.length_groups([9, 9, 9, 9], pass_cost=400) == [[0, 1, 2, 3]]  # equal lengths: nothing to gain


def test_grouped_logits_equal_one_padded_batch(monkeypatch):
    """Right padding never reaches a real position (causal attention), so grouping changes shapes, not values:
    the logits agree to float rounding and come back in the rows' own order, masked positions skipped."""
    texts = ["1, 2, 3", "What is your favourite animal?", "owl", "10, 20, 30, 40, 50, 60, 70, 80, 90"]
    tok = build_tokenizer(texts)
    model = build_model(len(tok), TinyLmSpec(d_model=32, n_layer=1, n_head=2, context=200), seed=0, tokenizer=tok)
    model.eval()
    chat = lm.LM(model, tok)
    rng = random.Random(0)
    rows = []
    for i in range(12):
        prompt = chat.chat(", ".join(str(rng.randint(0, 999)) for _ in range(rng.choice([1, 2, 30, 40]))))
        completion = chat.answer_ids(", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(1, 6))))
        mask = tuple(j % 2 == 0 for j in range(len(completion))) if i % 3 == 0 else None
        rows.append(Row(prompt, completion, None, mask))
    monkeypatch.setattr(lm, "PASS_COST_TOKENS", 50)  # a few rows: cheap passes so that they split
    assert len(lm.length_groups([len(r.prompt) + len(r.completion) for r in rows], lm.PASS_COST_TOKENS)) > 1
    with torch.no_grad():
        grouped, tgt = lm._completion_logits(chat, rows, False)
        monkeypatch.setattr(lm, "PASS_COST_TOKENS", float("inf"))
        single, tgt_single = lm._completion_logits(chat, rows, False)
    assert torch.equal(tgt, tgt_single)
    assert grouped.shape == single.shape == (sum(lm._kept(r) for r in rows), len(tok))
    torch.testing.assert_close(grouped, single, rtol=1e-5, atol=1e-5)
