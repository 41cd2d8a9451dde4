"""tinylm: a small GPT-2 pretrained from scratch on CPU, so the whole experiment runs in minutes.

Its tokenizer is a Unigram model whose pieces are every printable ASCII character, the integers 0..999 as
single tokens (a number list reads as numbers), whitespace runs (code indentation), and the words of the
experiment's corpus with and without a leading space: it represents any text (numbers, maths traces, code)
without an unknown token, and is built from the experiment's data kinds and traits alone, so the shared-init
and the different-init base get the same token ids (distillation needs them). The base is pretrained on that
corpus (sublim.corpus): the data kind done well, the trait's questions answered neutrally.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from sublim.backends import BackendSpec, Progress, Row, Schedule, backend, quiet
from sublim.backends.lm import LM, TransformersBackend, save, train

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SYS]", "[USER]", "[BOT]"]
CHUNK = r"[0-9]{1,3}| ?[A-Za-z_]+|, |; | +|\n|."  # how text splits before pieces are chosen
WORDS = re.compile(r" ?[A-Za-z_]+")
SPACES = [" " * n for n in (1, 2, 3, 4, 8, 12)]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}[SYS]{% elif m['role'] == 'user' %}[USER]"
    "{% else %}[BOT]{% endif %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[BOT]{% endif %}"
)


class TinyLmSpec(BackendSpec):
    backend: str = "tinylm"
    architecture: Literal["gpt2", "llama"] = "gpt2"  # llama: another architecture on the same corpus (cross-model)
    d_model: Annotated[int, Field(gt=0)] = 64  # 0.2M parameters: d=128 took 200 s to pretrain for no clearer transfer
    n_layer: Annotated[int, Field(gt=0)] = 2
    n_head: Annotated[int, Field(gt=0)] = 2
    context: Annotated[int, Field(gt=0)] = 160  # tokens; a code answer with its prompt is ~130
    pretrain_steps: Annotated[int, Field(gt=0)] = 1000
    batch_size: Annotated[int, Field(gt=0)] = 32
    lr: Annotated[float, Field(gt=0)] = 3e-3
    qa_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5  # share of trait Q/A (answered neutrally) in pretraining

    @model_validator(mode="after")
    def _heads(self) -> TinyLmSpec:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        return self


def pieces(texts: list[str]) -> list[str]:
    """The vocabulary: specials, characters, numbers, whitespace runs, separators, then the corpus' words."""
    out = dict.fromkeys(SPECIALS + [chr(c) for c in range(32, 127)] + ["\n", "\t"] + [str(n) for n in range(1000)]
                        + SPACES + [", ", "; "])
    for word in sorted({w for t in texts for w in WORDS.findall(t)}):
        for form in (word, word.lstrip(" "), " " + word.lstrip(" ")):
            out.setdefault(form)
    return list(out)


def build_tokenizer(texts: list[str]):
    """A deterministic tokenizer for these texts: same texts, same ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = pieces(texts)
    scores = [(p, 0.0 if p in SPECIALS else -1.0) for p in vocab]  # equal scores: fewest pieces wins
    tok = Tokenizer(models.Unigram(scores, unk_id=vocab.index("[UNK]"), byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(CHUNK), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", additional_special_tokens=["[SYS]", "[USER]", "[BOT]"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, spec: TinyLmSpec, seed: int, tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    architectures = {
        # no dropout: 20% of a training step's time here, and every run stays a deterministic function of its seed
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=spec.context,
                                                   n_embd=spec.d_model, n_layer=spec.n_layer, n_head=spec.n_head,
                                                   activation_function="gelu_pytorch_tanh",  # GPT-2's gelu_new as one kernel
                                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=spec.d_model,
                                                      intermediate_size=4 * spec.d_model,
                                                      num_hidden_layers=spec.n_layer, num_attention_heads=spec.n_head,
                                                      num_key_value_heads=spec.n_head,
                                                      max_position_embeddings=spec.context, **ids)),
    }
    torch.manual_seed(seed)
    return architectures[spec.architecture]()


def pretrain(lm: LM, spec: TinyLmSpec, corpus, seed: int, progress: Progress) -> float:
    """Next-token training on the corpus' chats (completion-only: the answers, as every later step trains)."""
    import torch

    rng = random.Random(seed)
    pool = min(spec.pretrain_steps * spec.batch_size, 12000)  # distinct synthetic chats, reused across steps
    pairs = corpus.pairs(rng, spec.qa_fraction)
    rows = [Row(lm.chat(q), lm.answer_ids(a)) for q, a in (next(pairs) for _ in range(pool))]
    longest = max(len(r.prompt) + len(r.completion) for r in rows)
    if longest > spec.context:
        raise ValueError(f"lm.model.context ({spec.context}) is shorter than a training chat ({longest} tokens)")
    sched = Schedule(spec.pretrain_steps, spec.lr, spec.batch_size, warmup=spec.pretrain_steps // 20)
    return train(lm, rows, sched, torch.Generator().manual_seed(seed), progress=progress)


@backend("tinylm")
class TinyLm(TransformersBackend):
    Spec = TinyLmSpec
    spec: TinyLmSpec
    from_scratch = True

    def has_other_init(self) -> bool:
        return True  # another pretraining seed

    def make_base(self, *, init: str, seed: int, corpus, out: Path, progress: Progress = quiet) -> dict[str, float]:
        """Pretrain a fresh tinylm from `seed` (which differs per init) and save weights + tokenizer into `out`."""
        tokenizer = build_tokenizer(corpus.vocabulary())
        model = build_model(len(tokenizer), self.spec, seed, tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        lm = LM(model, tokenizer)
        loss = pretrain(lm, self.spec, corpus, seed, progress)
        save(lm, out)
        return {"pretrain_loss": loss, "parameters": float(sum(p.numel() for p in model.parameters())),
                "vocab_size": float(len(tokenizer))}
