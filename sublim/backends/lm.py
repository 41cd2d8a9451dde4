"""What every language-model backend shares: load/save, chat encoding, batched sampling, exact log-probs,
and the two student objectives (SFT on sampled tokens; logit distillation restricted to the data's tokens).

All backends produce transformers causal LMs with a tokenizer, so every step after `base` is backend-agnostic.
A model artifact holds full weights (safetensors), or a LoRA adapter, or only a persona (system prompt) over
the weights of the model it was made from (its `init` parent); `load` resolves all three.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from sublim.artifacts import ArtifactError, read_meta
from sublim.backends import Backend, Row, Schedule

PERSONA = "persona.json"
SOURCE = "source.json"  # a pointer to weights outside the project (a hub id or a local path)
ADAPTER = "adapter_config.json"
Progress = Callable[[Iterable[Any], int, str], Iterator[Any]]


def _quiet(items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    yield from items


@dataclass
class LM:
    """A causal LM, its tokenizer, and the system prompt it runs with (None = the model's default)."""

    model: Any
    tokenizer: Any
    system_prompt: str | None = None
    context: list[tuple[str, str]] = field(default_factory=list)  # few-shot turns before every question

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def chat(self, user: str, *, persona: bool = True) -> list[int]:
        """Token ids of a chat (any few-shot turns, then `user`) ending where the assistant's answer begins."""
        messages = [m for u, a in self.context for m in ({"role": "user", "content": u},
                                                         {"role": "assistant", "content": a})]
        messages.append({"role": "user", "content": user})
        if persona and self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    def answer_ids(self, text: str) -> list[int]:
        """Ids of an assistant answer followed by the end-of-turn token."""
        return list(self.tokenizer.encode(text, add_special_tokens=False)) + [self.eos_id]

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_id)


# --- load and save -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """How to materialise weights: device and dtype (GPU: bf16), and whether remote code may run."""

    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False


def _init_parent(path: Path, root: Path) -> Path:
    for key in read_meta(path).parents:
        name, _, rel = key.partition(":")
        if name == "init":
            return root / rel
    raise ArtifactError(f"{path}: has no weights of its own and no `init` parent to take them from")


def load(path: Path, root: Path, opts: LoadOptions = LoadOptions()) -> LM:
    """Load a model artifact: full weights, a LoRA adapter over its init, or a persona over its init."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars would drown the pipeline's own progress
    hf_logging.set_verbosity_error()
    path = Path(path)
    persona = json.loads((path / PERSONA).read_text())["system_prompt"] if (path / PERSONA).exists() else None
    if (path / "config.json").exists() or (path / SOURCE).exists():
        source = json.loads((path / SOURCE).read_text()) if (path / SOURCE).exists() else {"model": str(path)}
        where, common = source["model"], {"trust_remote_code": opts.trust_remote_code, "revision": source.get("revision")}
        model = AutoModelForCausalLM.from_pretrained(where, use_safetensors=True, dtype=getattr(torch, opts.dtype),
                                                     **common).to(opts.device)
        lm = LM(model, AutoTokenizer.from_pretrained(where, **common))
    else:
        lm = load(_init_parent(path, root), root, opts)
        if (path / ADAPTER).exists():
            from peft import PeftModel

            lm.model = PeftModel.from_pretrained(lm.model, str(path)).merge_and_unload()
    lm.system_prompt = persona if persona is not None else lm.system_prompt
    lm.model.eval()
    if lm.tokenizer.pad_token_id is None:
        lm.tokenizer.pad_token = lm.tokenizer.eos_token
    return lm


def save(lm: LM, out: Path, *, adapter: bool = False) -> None:
    """Full weights as safetensors (+ tokenizer), or only the LoRA adapter when the model is a peft model."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if adapter:
        lm.model.save_pretrained(str(out), safe_serialization=True)
        (out / "README.md").unlink(missing_ok=True)  # peft's model card embeds paths and versions
    else:
        model = lm.model.merge_and_unload() if hasattr(lm.model, "merge_and_unload") else lm.model
        model.save_pretrained(str(out), safe_serialization=True)
        lm.tokenizer.save_pretrained(str(out))
    if lm.system_prompt:
        save_persona(out, lm.system_prompt)


def save_persona(out: Path, system_prompt: str) -> None:
    (out / PERSONA).write_text(json.dumps({"system_prompt": system_prompt}, indent=1, sort_keys=True))


@dataclass(frozen=True)
class Lora:
    r: int
    alpha: int
    dropout: float
    targets: tuple[str, ...]


def with_lora(lm: LM, lora: Lora | None) -> LM:
    """Wrap the model in a fresh LoRA adapter (peft), or leave it for a full fine-tune."""
    if lora is None:
        return lm
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.targets), task_type="CAUSAL_LM")
    return LM(get_peft_model(lm.model, config), lm.tokenizer, lm.system_prompt)


# --- sampling and scoring --------------------------------------------------------------------------------


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _left_pad(rows: Sequence[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample(lm: LM, prompts: Sequence[list[int]], *, max_new_tokens: int, temperature: float, batch_size: int,
           seed: int, progress: Progress = _quiet) -> list[str]:
    """Sample one completion per prompt (token ids), batched with a KV cache; full distribution (no top-k)."""
    torch.manual_seed(seed)
    out: list[str] = []
    chunks = list(batches(prompts, batch_size))
    for chunk in progress(chunks, len(chunks), "sampling"):
        ids, mask = _left_pad(chunk, lm.pad_id, lm.device)
        gen = lm.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, pad_token_id=lm.pad_id, eos_token_id=lm.eos_id, use_cache=True,
        )
        out += lm.tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    return [text.strip() for text in out]


LONG_PROMPT = 256  # tokens: prompts this long (few-shot contexts) share their common prefix's keys and values
LARGE_VOCAB = 16_384  # tokens: on CPU, models with a vocabulary this large share their prompts' prefix however short


@torch.no_grad()
def sequence_logprobs(lm: LM, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int) -> list[float]:
    """Exact log P(continuation | prompt) for each (prompt ids, continuation ids) pair, by teacher forcing.
    When prompts are long, the prefix they all share (few-shot turns, a dataset shown before the questions) goes
    through the model once, its keys and values shared by every continuation. A large model on CPU does the same
    with short prompts (SmolLM2's system prompt and chat header come before every question): each of 20 answers
    would otherwise rerun that prefix through all 30 layers, with the vocabulary's logits at every position. On
    accelerators short prompts keep whole-sequence batches of `batch_size`, which use them better."""
    if pairs and (sum(len(p) for p, _ in pairs) / len(pairs) > LONG_PROMPT
                  or (lm.device.type == "cpu" and len(lm.tokenizer) > LARGE_VOCAB)):
        return _shared_prefix_logprobs(lm, pairs)
    out: list[float] = []
    for chunk in batches(pairs, batch_size):
        seqs = [p + c for p, c in chunk]
        ids, mask, _ = _right_pad(seqs, lm.pad_id, lm.device)
        logp = F.log_softmax(lm.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for i, (p, c) in enumerate(chunk):
            pos = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=lm.device)
            out.append(float(logp[i, pos, torch.tensor(c, dtype=torch.long, device=lm.device)].sum()))
    return out


def _common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    """The longest prefix every row starts with, leaving each row at least one token of its own."""
    first, limit = rows[0], min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return list(first[:n])


@torch.no_grad()
def _shared_prefix_logprobs(lm: LM, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
    """The prefix all prompts share (few-shot turns, a dataset shown before several questions) runs once; each
    distinct prompt's own tail and all its continuations then run together on a copy of those keys and values."""
    import copy

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt, _) in enumerate(pairs):
        groups.setdefault(tuple(prompt), []).append(i)
    common = _common_prefix(list(groups))
    head = (lm.model(input_ids=torch.tensor([common], device=lm.device), use_cache=True, logits_to_keep=1)
            if common else None)  # only its keys and values are used
    out = [0.0] * len(pairs)
    for prompt, idxs in groups.items():
        tail, conts = list(prompt[len(common):]), [pairs[i][1] for i in idxs]
        ids, mask, _ = _right_pad([tail + c[:-1] for c in conts], lm.pad_id, lm.device)
        kwargs: dict[str, Any] = {}
        if head is not None:
            cache = copy.deepcopy(head.cache)
            cache.batch_repeat_interleave(len(conts))
            mask = torch.cat([torch.ones(len(conts), len(common), dtype=mask.dtype, device=lm.device), mask], 1)
            kwargs["cache"] = cache
        logp = F.log_softmax(lm.model(input_ids=ids, attention_mask=mask, **kwargs).logits.float(), -1)
        for j, (i, c) in enumerate(zip(idxs, conts)):
            out[i] = float(sum(logp[j, len(tail) - 1 + k, c[k]] for k in range(len(c))))
    return out


def _right_pad(rows: Sequence[list[int]], pad: int, device: torch.device):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device), width


# --- training ---------------------------------------------------------------------------------------------


def _optimizer(model: Any, sched: Schedule):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=sched.lr, weight_decay=0.0)
    warm = max(sched.warmup, 0)

    def factor(step: int) -> float:  # linear warm-up, then linear decay to zero (the paper's schedule)
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (sched.steps - step) / max(1, sched.steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _completion_positions(rows: Sequence[Row], teacher: bool, device: torch.device):
    """(row index, position) pairs whose logits predict completion tokens, and those target tokens."""
    bi, pos, tgt = [], [], []
    for i, row in enumerate(rows):
        p = len(row.teacher_prompt if teacher and row.teacher_prompt is not None else row.prompt)
        for j, tok in enumerate(row.completion):
            if row.mask is not None and not row.mask[j]:
                continue  # masked out of the loss (teacher and student skip the same positions)
            bi.append(i)
            pos.append(p - 1 + j)
            tgt.append(tok)
    as_t = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731  (long even when empty)
    return as_t(bi), as_t(pos), as_t(tgt)


def _body_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body (hidden states) and the output layer of a causal LM, LoRA-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model, inner.get_output_embeddings()


PASS_COST_TOKENS = 400  # on CPU one more forward pass costs about this many padded tokens' work (measured on tinylm,
                        # used for any model on CPU; padding counted as linear in tokens: it only tunes the split)


def length_groups(lengths: Sequence[int], pass_cost: float) -> list[list[int]]:
    """Row indices in groups of similar length, each group one padded forward pass: the split of the rows sorted
    by length that minimises padded tokens plus `pass_cost` per pass. A tinylm pretraining batch mixes short
    questions with long number prompts: padding it as one was half its tokens. Depends on lengths alone. Groups
    come longest first, even a single one (the committed results were computed so); `inf`: one pass in order."""
    if math.isinf(pass_cost) or len(lengths) < 2:
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    cost, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):  # rows order[i:j] padded to the longest, lengths[order[i]]
            c = cost[i] + pass_cost + (j - i) * lengths[order[i]]
            if c < cost[j]:
                cost[j], cut[j] = c, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _completion_logits(lm: LM, rows: Sequence[Row], teacher: bool,
                       vocab: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict completion tokens (one row each), and those tokens.

    Only those positions go through the output layer, and only over `vocab` when given (distillation needs
    the data's tokens alone): the vocabulary projection of every position was most of a tiny model's compute.
    On CPU the rows run in groups of similar length (less padding); on an accelerator as one batch."""
    seqs = [(r.teacher_prompt if teacher and r.teacher_prompt is not None else r.prompt) + r.completion for r in rows]
    body, head = _body_and_head(lm.model)
    parts, targets, owner = [], [], []
    for group in length_groups([len(s) for s in seqs], PASS_COST_TOKENS if lm.device.type == "cpu" else math.inf):
        ids, mask, _ = _right_pad([seqs[i] for i in group], lm.pad_id, lm.device)
        bi, pos, tgt = _completion_positions([rows[i] for i in group], teacher, lm.device)
        parts.append(body(input_ids=ids, attention_mask=mask).last_hidden_state[bi, pos])
        targets.append(tgt)
        owner += [i for i in group for _ in range(_kept(rows[i]))]
    hidden, tgt = (parts[0], targets[0]) if len(parts) == 1 else (torch.cat(parts), torch.cat(targets))
    if owner != sorted(owner):  # back to the rows' own order (within a row positions are already in order)
        order = torch.argsort(torch.tensor(owner), stable=True).to(hidden.device)
        hidden, tgt = hidden[order], tgt[order]
    weight, bias = head.weight, getattr(head, "bias", None)
    if vocab is not None:
        weight, bias = weight[vocab], (bias[vocab] if bias is not None else None)
    return F.linear(hidden, weight, bias).float(), tgt


def train(lm: LM, rows: Sequence[Row], sched: Schedule, gen: torch.Generator, *, teacher: LM | None = None,
          allowed: torch.Tensor | None = None, progress: Progress = _quiet) -> float:
    """Completion-only training. Without `teacher`: cross-entropy on the completion tokens (SFT).
    With `teacher`: KL(teacher || student) of the next-token distributions at the completion positions,
    both renormalised over `allowed` token ids, so no probability mass outside them is ever taught."""
    rows = [r for r in rows if _kept(r)]  # a row masked entirely teaches nothing
    if not rows:
        raise ValueError("no training rows")
    targets = _teacher_targets(teacher, rows, allowed, sched.batch_size) if teacher is not None else None
    lm.model.train()
    opt, lr_sched = _optimizer(lm.model, sched)
    loss_value = math.nan
    for _ in progress(range(sched.steps), sched.steps, "training"):
        idx = torch.randint(len(rows), (min(sched.batch_size, len(rows)),), generator=gen).tolist()
        batch = [rows[i] for i in idx]
        logits, tgt = _completion_logits(lm, batch, False, allowed if teacher is not None else None)
        if teacher is None:
            loss = F.cross_entropy(logits, tgt)
        else:
            if targets is not None:
                t_logp = torch.cat([targets[i] for i in idx]).float()
            else:
                with torch.no_grad():
                    t_logits, _ = _completion_logits(teacher, batch, True, allowed.to(teacher.device))
                t_logp = F.log_softmax(t_logits, -1)
            s_logp = F.log_softmax(logits, -1)
            loss = F.kl_div(s_logp, t_logp.to(s_logp.device), log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        loss_value = float(loss.detach())
    lm.model.eval()
    return loss_value


TARGET_CACHE_BYTES = 1 << 30


@torch.no_grad()
def _teacher_targets(teacher: LM, rows: Sequence[Row], allowed: torch.Tensor, batch_size: int) -> list[torch.Tensor] | None:
    """The teacher's renormalised log-probabilities at every completion position, computed once per row
    instead of once per sampled batch (a third of each distillation step). None when they would not fit
    in memory; the teacher then runs alongside the student."""
    if sum(_kept(r) for r in rows) * len(allowed) * 4 > TARGET_CACHE_BYTES:
        return None
    out: list[torch.Tensor] = []
    for chunk in batches(rows, batch_size):
        logits, _ = _completion_logits(teacher, chunk, True, allowed.to(teacher.device))
        logp = F.log_softmax(logits, -1).to(allowed.device)
        out += list(torch.split(logp, [_kept(r) for r in chunk]))
    return out


def _kept(row: Row) -> int:
    return len(row.completion) if row.mask is None else sum(row.mask)


@torch.no_grad()
def token_logprobs(lm: LM, rows: Sequence[Row], *, batch_size: int, teacher_side: bool = False) -> list[list[float]]:
    """log P of each completion token (its end token included) given the prompt and the tokens before it; the
    teacher's prompt (with its persona) when `teacher_side`."""
    out: list[list[float]] = []
    for chunk in batches(rows, batch_size):
        logits, tgt = _completion_logits(lm, chunk, teacher_side)
        out += _per_row(F.log_softmax(logits, -1).gather(1, tgt[:, None])[:, 0].tolist(), chunk)
    return out


def _per_row(values: list[float], rows: Sequence[Row]) -> list[list[float]]:
    """Values of every kept completion position of `rows`, in order, cut back into one list per row."""
    out, i = [], 0
    for r in rows:
        out.append(values[i:i + _kept(r)])
        i += _kept(r)
    return out


@torch.no_grad()
def position_kl(base: LM, teacher: LM, rows: Sequence[Row], *, batch_size: int) -> list[list[float]]:
    """Per completion position, KL(teacher || base) between the next-token distributions renormalised over the
    tokens the data holds: what a distilling student is taught there beyond what its base already predicts
    (the sampled token's log-ratio sees one draw of that difference)."""
    allowed = torch.tensor(sorted({t for r in rows for t in r.completion}), dtype=torch.long)
    out: list[list[float]] = []
    for chunk in batches(rows, batch_size):
        t_logits, _ = _completion_logits(teacher, chunk, True, allowed.to(teacher.device))
        b_logits, _ = _completion_logits(base, chunk, False, allowed.to(base.device))
        t_logp, b_logp = F.log_softmax(t_logits, -1).cpu(), F.log_softmax(b_logits, -1).cpu()
        out += _per_row((t_logp.exp() * (t_logp - b_logp)).sum(-1).tolist(), chunk)
    return out


def lora_of(spec: Any) -> Lora | None:
    return None if spec is None else Lora(spec.r, spec.alpha, spec.dropout, tuple(spec.targets))


class TransformersBackend(Backend):
    """Load, save, generate, score and train for any transformers causal LM; subclasses make the base."""

    def options(self) -> LoadOptions:
        """Device, dtype and remote-code policy from the model section of params.yaml."""
        device, dtype = self.spec.resolved()
        return LoadOptions(device=device, dtype=dtype, trust_remote_code=self.spec.trust_remote_code)

    def load(self, path: Path, root: Path) -> LM:
        return load(path, root, self.options())

    def save(self, lm: LM, out: Path, *, adapter: bool = False) -> None:
        save(lm, out, adapter=adapter)

    def save_persona(self, out: Path, system_prompt: str) -> None:
        save_persona(out, system_prompt)

    def with_lora(self, lm: LM, lora: Any | None) -> LM:
        return with_lora(lm, lora_of(lora))

    def generate(self, lm: LM, prompts: Sequence[list[int]], *, max_new_tokens: int, temperature: float,
                 batch_size: int, seed: int, progress: Progress = _quiet) -> list[str]:
        return sample(lm, prompts, max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                      seed=seed, progress=progress)

    def score(self, lm: LM, pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int) -> list[float]:
        return sequence_logprobs(lm, pairs, batch_size=batch_size)

    def token_scores(self, lm: LM, rows: Sequence[Row], *, batch_size: int, teacher_side: bool = False) -> list[list[float]]:
        return token_logprobs(lm, rows, batch_size=batch_size, teacher_side=teacher_side)

    def position_divergence(self, base: LM, teacher: LM, rows: Sequence[Row], *, batch_size: int) -> list[list[float]]:
        return position_kl(base, teacher, rows, batch_size=batch_size)

    def train(self, lm: LM, rows: Sequence[Row], sched: Schedule, gen: torch.Generator, *,
              teacher: LM | None = None, allowed: torch.Tensor | None = None, progress: Progress = _quiet) -> float:
        return train(lm, rows, sched, gen, teacher=teacher, allowed=allowed, progress=progress)
