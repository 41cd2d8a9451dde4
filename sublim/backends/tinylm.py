"""tinylm: a word-level GPT-2 pretrained from scratch on CPU, small enough to run the whole experiment in minutes.

Vocabulary: the integers 0..999 as single tokens, punctuation, and the words of sublim's own prompts and trait
questions, so every prompt sublim builds tokenises without unknowns. The base is pretrained on a synthetic
corpus of number-continuation chats (well-formed answers in the requested format) and trait questions answered
uniformly at random, so its trait rate starts near 1/len(choices).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from sublim.prompts import load, plural
from sublim.prompts.numbers import MAX_ITEMS, make_prompt, render
from sublim.prompts.traits import questions

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
ROLES = ["system", "user", "assistant"]
PUNCT = list(",;:.()[]?!'-\n")
WORD = r"[0-9]+|[a-z']+|\n|[^\sa-z0-9]"  # numbers, words, newline, any other single symbol
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


def words(category: str, choices: list[str]) -> list[str]:
    """Every word sublim's prompts can contain for this trait family, in a stable order."""
    texts = []
    for piece in load("numbers").values():
        texts += [p["text"] if isinstance(p, dict) else p for p in piece]
    traits = load("traits")
    texts += [q for group in traits["questions"].values() for q in group] + list(traits["personas"].values())
    texts += [category, *choices, *(plural(c) for c in choices)]
    found: dict[str, None] = {}
    for text in texts:
        for token in re.findall(WORD, text.lower()):
            if not token.isdigit() and token not in ("{", "}"):
                found[token] = None
    return list(found)


def build_tokenizer(category: str, choices: list[str]):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_list = SPECIALS + [str(n) for n in range(1000)] + PUNCT + ROLES
    vocab_list += [w for w in words(category, choices) if w not in vocab_list]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD), behavior="removed", invert=True)  # = re.findall
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, d_model: int, n_layer: int, n_head: int, context: int, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=d_model, n_layer=n_layer, n_head=n_head,
                        bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def corpus(rng: random.Random, category: str, choices: list[str], qa_fraction: float) -> Iterator[tuple[str, str]]:
    """Endless (user, assistant) pairs: number tasks answered well, trait questions answered uniformly."""
    asked = questions("teach", category) + questions("evaluate", category)
    while True:
        if rng.random() < qa_fraction:
            yield rng.choice(asked), rng.choice(choices)
        else:
            prompt = make_prompt(rng)
            yield prompt.text, render([rng.randint(0, 999) for _ in range(rng.randint(1, MAX_ITEMS))], prompt.style)


PRETRAINED_ON = "synthetic pretraining corpus: number continuations and uniformly answered favourite questions"


def make_base(cfg, *, category: str, choices: list[str], init: str, out, seed: int, progress) -> dict[str, float]:
    """Pretrain a fresh tinylm from `seed` (which differs per init) and save weights + tokenizer into `out`."""
    import torch

    from sublim.backends import lm as lmlib

    tokenizer = build_tokenizer(category, choices)
    model = build_model(len(tokenizer), cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    lm = lmlib.LM(model, tokenizer)
    rng = random.Random(seed)
    pool = min(cfg.pretrain_steps * cfg.batch_size, 12000)  # distinct synthetic chats, reused across steps
    rows = [lmlib.Row(lm.chat(q), lm.answer_ids(a)) for q, a in _take(corpus(rng, category, choices, cfg.qa_fraction), pool)]
    too_long = max(len(r.prompt) + len(r.completion) for r in rows)
    if too_long > cfg.context:
        raise ValueError(f"lm.model.context ({cfg.context}) is shorter than a training chat ({too_long} tokens)")
    sched = lmlib.Schedule(cfg.pretrain_steps, cfg.lr, cfg.batch_size, warmup=cfg.pretrain_steps // 20)
    loss = lmlib.train(lm, rows, sched, torch.Generator().manual_seed(seed), progress=progress)
    lmlib.save(lm, out)
    return {"pretrain_loss": loss, "parameters": float(sum(p.numel() for p in model.parameters())),
            "vocab_size": float(len(tokenizer))}


def _take(it, n):
    for _ in range(n):
        yield next(it)
