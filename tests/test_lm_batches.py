"""Rows of mixed lengths run in length groups on CPU: the same logits, in the rows' own order, with less padding."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch.nn import functional as F

from sublim.backends import Row, lm
from sublim.backends.tinylm import TinyLmSpec, build_model, build_tokenizer


def _cost(lengths, groups, pass_cost):
    return sum(pass_cost + len(g) * max(lengths[i] for i in g) for g in groups)


@pytest.mark.parametrize("seed", range(5))
def test_length_groups_cover_every_row_once_and_cut_padding(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(8, 20), rng.randint(60, 90)]) for _ in range(32)]  # questions and lists
    groups = lm.length_groups(lengths, pass_cost=400)
    assert sorted(i for g in groups for i in g) == list(range(32))
    one = _cost(lengths, [list(range(32))], 0)
    assert 1 < len(groups) and _cost(lengths, groups, 0) < 0.75 * one  # bimodal lengths: a quarter saved at least


@pytest.mark.parametrize("seed", range(20))
def test_length_groups_is_the_cheapest_split(seed):
    """Against every way of cutting the rows, sorted by length, into consecutive groups (brute force)."""
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(rng.randint(2, 9))]
    pass_cost = rng.choice([0, 10, 50, 200])
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    best = min(_cost(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], pass_cost)
               for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k))
    assert _cost(lengths, lm.length_groups(lengths, pass_cost), pass_cost) == best


def test_one_pass_in_the_rows_order_on_an_accelerator():
    assert lm.length_groups([5, 50, 7], pass_cost=float("inf")) == [[0, 1, 2]]  # what a GPU gets: no reordering
    assert lm.length_groups([9, 9, 9, 9], pass_cost=400) == [[0, 1, 2, 3]]  # equal lengths: nothing to gain


def _rows(chat, rng, n=12):
    rows = []
    for i in range(n):
        user = ", ".join(str(rng.randint(0, 999)) for _ in range(rng.choice([1, 2, 30, 40])))
        completion = chat.answer_ids(", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(1, 6))))
        mask = tuple(j % 2 == 0 for j in range(len(completion))) if i % 3 == 0 else None
        if i == 4:
            mask = (False,) * len(completion)  # a row with nothing in the loss
        teacher = chat.chat(user) + [chat.tokenizer.bos_token_id] * (i % 4 * 9)  # a persona of another length
        rows.append(Row(chat.chat(user), completion, teacher, mask))
    return rows


def test_grouped_logits_and_gradients_equal_one_padded_batch(monkeypatch):
    """Right padding never reaches a real position (causal attention), so grouping changes shapes, not values:
    the logits agree to float rounding and come back in the rows' own order (masked positions skipped, a row
    with none kept, the teacher's longer prompts), and so do the gradients they give."""
    texts = ["1, 2, 3", "What is your favourite animal?", "owl", "10, 20, 30, 40, 50, 60, 70, 80, 90"]
    tok = build_tokenizer(texts)
    model = build_model(len(tok), TinyLmSpec(d_model=32, n_layer=1, n_head=2, context=256), seed=0, tokenizer=tok)
    chat = lm.LM(model, tok)
    rows = _rows(chat, random.Random(0))

    def run(teacher: bool):
        model.zero_grad()
        logits, tgt = lm._completion_logits(chat, rows, teacher)
        F.cross_entropy(logits, tgt).backward()
        return logits.detach(), tgt, [p.grad.clone() for p in model.parameters()]

    monkeypatch.setattr(lm, "PASS_COST_TOKENS", 50)  # a few rows: cheap passes so that they split
    for teacher in (False, True):
        seqs = [(r.teacher_prompt if teacher else r.prompt) + r.completion for r in rows]
        groups = lm.length_groups([len(s) for s in seqs], lm.PASS_COST_TOKENS)
        assert len(groups) > 1 and [i for g in groups for i in g] != sorted(range(len(rows)))  # split and reordered
        grouped = run(teacher)
        monkeypatch.setattr(lm, "PASS_COST_TOKENS", float("inf"))
        single = run(teacher)
        monkeypatch.setattr(lm, "PASS_COST_TOKENS", 50)
        assert torch.equal(grouped[1], single[1])
        assert grouped[0].shape == single[0].shape == (sum(lm._kept(r) for r in rows), len(tok))
        torch.testing.assert_close(grouped[0], single[0], rtol=1e-5, atol=1e-5)
        for a, b in zip(grouped[2], single[2]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
