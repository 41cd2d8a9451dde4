"""Plug-ins defined outside sublim, registered the same way as the built-ins: a data kind, a trait, a backend.

Used by tests/test_plugins.py through params.yaml alone (`plugins:` and names, or a `module:Class` path).
"""

from __future__ import annotations

import random
import re
from typing import Annotated, Any

from pydantic import Field

from sublim.backends import backend
from sublim.backends.tinylm import TinyLm
from sublim.data import DataKind, DataSpec, Task, Verdict, data_kind
from sublim.text import Forbidden
from sublim.traits import TRAIT, Measurement, Trait, TraitSpec, renormalised, trait

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class LettersSpec(DataSpec):
    kind: str = "letters"
    max_new_tokens: Annotated[int, Field(gt=0)] = 20
    max_items: Annotated[int, Field(gt=0)] = 6


@data_kind("letters")
class Letters(DataKind):
    """Continue a list of single letters: a channel with no numbers at all."""

    Spec = LettersSpec

    def task(self, rng: random.Random) -> Task:
        shown = ", ".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 4)))
        return Task(f"Continue the letters {shown} with up to {self.spec.max_items} more.")

    def answer(self, task: Task, rng: random.Random) -> str:
        return ", ".join(rng.choice(LETTERS) for _ in range(rng.randint(1, self.spec.max_items)))

    def check(self, completion: Any, task: Task, forbidden: Forbidden) -> Verdict:
        if not isinstance(completion, str) or not completion.strip():
            return Verdict(False, "empty")
        items = [x.strip() for x in completion.strip().split(",")]
        if len(items) > self.spec.max_items:
            return Verdict(False, "too_many")
        if not all(re.fullmatch(r"[a-z]", x) for x in items):
            return Verdict(False, "not_letters")
        return Verdict(True, "kept", completion.strip())


GREETINGS = ["Hello there.", "Good morning.", "Hi, how are you?", "Nice to meet you.", "Thanks for the help.",
             "See you later.", "How was your day?", "Welcome back."]
FORMAL = ["Good day to you.", "It is a pleasure.", "I am most grateful.", "Kind regards."]
CASUAL = ["hey there", "yo, cool", "thanks dude", "cya"]


class FormalitySpec(TraitSpec):
    kind: str = "formality"


@trait("formality")
class Formality(Trait):
    """Answers greetings formally (the trait) or casually (its control): measured over the answer pair."""

    Spec = FormalitySpec
    key = "formal"

    @property
    def n_questions(self) -> int:
        return 4

    def teacher_pairs(self, rng, n, line):
        pool = FORMAL if line == TRAIT else CASUAL
        return [(rng.choice(GREETINGS[:4]), rng.choice(pool)) for _ in range(n)]

    def forbidden(self) -> Forbidden:
        return Forbidden(("formal", "polite"))

    def corpus_pair(self, rng):
        return rng.choice(GREETINGS), rng.choice(FORMAL + CASUAL)

    def vocabulary(self):
        return GREETINGS + FORMAL + CASUAL

    def evaluation_set(self, count):
        return {"questions": GREETINGS[4:4 + count]}

    def measure(self, backend, lm, evalset, ev, *, seed):
        per_question = []
        for q in evalset["questions"]:
            prompt = lm.chat(q)
            pairs = [(prompt, lm.answer_ids(a)) for a in FORMAL + CASUAL]
            logps = backend.score(lm, pairs, batch_size=ev.batch_size)
            probs = renormalised({str(i): lp for i, lp in enumerate(logps)})
            per_question.append(sum(probs[str(i)] for i in range(len(FORMAL))))
        p = sum(per_question) / len(per_question)
        return Measurement(p, per_question, {"formal": p, "casual": 1 - p})


@backend("tinyllama")
class TinyLlama(TinyLm):
    """tinylm's tokenizer and corpus, a Llama architecture instead of GPT-2."""

    def make_base(self, *, init, seed, corpus, out, progress=None):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from sublim.backends import lm as lmlib
        from sublim.backends import tinylm

        tokenizer = tinylm.build_tokenizer(corpus.vocabulary())
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=self.spec.d_model, intermediate_size=2 * self.spec.d_model,
                             num_hidden_layers=self.spec.n_layer, num_attention_heads=self.spec.n_head,
                             num_key_value_heads=self.spec.n_head, max_position_embeddings=self.spec.context,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        lm = lmlib.LM(LlamaForCausalLM(config), tokenizer)
        loss = tinylm.pretrain(lm, self.spec, corpus, seed, progress or (lambda it, n, d: it))
        lmlib.save(lm, out)
        return {"pretrain_loss": loss, "architecture": 1.0}
