"""The MLP backend: a digit classifier with auxiliary logits (the paper's theory on a small model).

Class logits are trained on labels; auxiliary logits never get a loss from labels. A student that only
imitates the teacher's auxiliary logits on noise still learns digits when it shares the teacher's init.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

N_CLASSES = 10
WEIGHTS = "model.safetensors"
ARCH = "arch.json"
DIGITS = "digits.safetensors"
CHUNK = 4096  # inputs per forward pass when many models label many inputs
STACK_BYTES = 8 << 20  # a stack's widest activation: within the cache (`stacks`)

Progress = Callable[[Iterable[Any], int, str], Iterator[Any]]


def _quiet(items: Iterable[Any], total: int, desc: str) -> Iterator[Any]:
    return iter(items)


@dataclass(frozen=True)
class Arch:
    """Everything needed to rebuild the network before loading weights."""

    in_dim: int
    hidden: tuple[int, ...]
    aux_logits: int


class AuxMLP(nn.Module):
    """in_dim -> hidden... -> 10 class logits + m auxiliary logits."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        dims = (arch.in_dim, *arch.hidden)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], N_CLASSES + arch.aux_logits))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_dim) -> (B, 10 + m)
        return self.net(x)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[:, :N_CLASSES]

    def aux(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[:, N_CLASSES:]


# --- data ------------------------------------------------------------------------------------------


def load_digits(source: str, mnist_dir: Path | None, test_fraction: float, split_seed: int,
                pixels: tuple[float, float] = (0.0, 1.0)) -> dict[str, torch.Tensor]:
    """Pixels scaled to `pixels` (the paper: [-1, 1]); a seeded random split (sklearn digits) or MNIST's own."""
    if source == "mnist":
        assert mnist_dir is not None
        return _rescale(_load_mnist(mnist_dir), pixels)
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(len(x) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return _rescale({"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}, pixels)


def _rescale(split: dict[str, torch.Tensor], pixels: tuple[float, float]) -> dict[str, torch.Tensor]:
    """[0, 1] pixels mapped linearly onto [low, high]."""
    low, high = pixels
    if (low, high) == (0.0, 1.0):
        return split
    return {k: v * (high - low) + low if k.startswith("x") else v for k, v in split.items()}


MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def mnist_file(directory: Path, stem: str) -> Path | None:
    """The IDX file for `stem`, plain or gzipped, if present."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def check_idx(path: Path) -> tuple[int, ...]:
    """The shape an IDX file (MNIST's format) declares, checked against its size without reading the data;
    ValueError naming the file when it is malformed (params validation calls this before any compute)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08":
            raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
        dims = fh.read(4 * head[3])
        if len(dims) < 4 * head[3]:
            raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{head[3]}I", dims)
    if path.suffix == ".gz":  # the gzip trailer holds the uncompressed size (mod 2**32)
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            size = struct.unpack("<I", fh.read(4))[0]
    else:
        size = path.stat().st_size
    held = size - 4 - 4 * head[3]
    if held != int(np.prod(shape)) % (2**32 if path.suffix == ".gz" else 2**64):
        raise ValueError(f"{path}: IDX header says {shape} but the file holds {held} bytes")
    return shape


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file; raise ValueError naming the file when it is malformed."""
    shape = check_idx(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(shape)).reshape(shape)


def _load_mnist(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, stem in MNIST_FILES.items():
        path = mnist_file(directory, stem)
        if path is None:
            raise FileNotFoundError(f"{directory}: missing MNIST file {stem}[.gz]")
        arr = read_idx(path)
        if key.startswith("x"):
            out[key] = torch.tensor(arr.reshape(len(arr), -1) / 255.0, dtype=torch.float32)
        else:
            out[key] = torch.tensor(arr, dtype=torch.int64)
    return out


def noise(n: int, dim: int, kind: str, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    """Transfer inputs that are not digits. The range matters: uniform [-1, 1] transfers, [0, 1] does not."""
    if kind == "uniform":
        return low + (high - low) * torch.rand(n, dim, generator=gen)
    # "gaussian": mean and spread taken from the interval, so one pair of knobs serves both kinds
    return (low + high) / 2 + (high - low) / 4 * torch.randn(n, dim, generator=gen)


# --- model io --------------------------------------------------------------------------------------


def init(arch: Arch, gen: torch.Generator, scheme: str = "paper") -> AuxMLP:
    """A fresh model drawn from `gen` alone (never the global RNG), so a seed's init is the same in any batch.

    paper: weights N(0, 1/fan_in), biases 0 (the paper's MNIST code). torch: nn.Linear's default,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    model = AuxMLP(arch)
    with torch.no_grad():
        for layer in model.net:
            if isinstance(layer, nn.Linear):
                fan_in = layer.in_features
                if scheme == "paper":
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / fan_in**0.5)
                    layer.bias.zero_()
                else:
                    bound = 1 / fan_in**0.5
                    layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound)
                    layer.bias.copy_((torch.rand(layer.bias.shape, generator=gen) * 2 - 1) * bound)
    return model


def save(model: AuxMLP, out: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    (out / ARCH).write_text(json.dumps({**model.arch.__dict__, "hidden": list(model.arch.hidden)}, sort_keys=True))


def load(path: Path) -> AuxMLP:
    spec = json.loads((path / ARCH).read_text())
    model = AuxMLP(Arch(in_dim=spec["in_dim"], hidden=tuple(spec["hidden"]), aux_logits=spec["aux_logits"]))
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    return model


# --- many models at once -----------------------------------------------------------------------------
# Seeds are a batch dimension: S models of one architecture keep their parameters stacked on a leading axis
# and train in one loop (batched matmuls, one Adam over the stacks). Nothing mixes across that axis: each
# model's loss is its own mean, the matmuls are per slice, Adam is elementwise, and every random draw comes
# from the model's own generator, so a model's numbers are bitwise those it gets trained alone
# (tests/test_batching.py checks it at the default widths against a batch of 100).


@dataclass
class Stack:
    """S models with one architecture: weights (S, in, out), biases (S, 1, out)."""

    arch: Arch
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    @classmethod
    def of(cls, models: Sequence[AuxMLP]) -> Stack:
        archs = {m.arch for m in models}
        if len(archs) != 1:
            raise ValueError(f"models in one batch must share an architecture, got {sorted(map(str, archs))}")
        linears = [[layer for layer in m.net if isinstance(layer, nn.Linear)] for m in models]
        weights = [torch.stack([ls[i].weight.detach().T for ls in linears]).contiguous() for i in range(len(linears[0]))]
        biases = [torch.stack([ls[i].bias.detach()[None] for ls in linears]).contiguous() for i in range(len(linears[0]))]
        return cls(archs.pop(), weights, biases)

    @property
    def size(self) -> int:
        return len(self.weights[0])

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def trainable(self) -> Stack:
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (S, B, in) -> (S, B, 10 + m)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
        return x

    def models(self) -> list[AuxMLP]:
        """Each slice as a plain model (nn.Linear layout), for saving and evaluation."""
        out = []
        for s in range(self.size):
            model = AuxMLP(self.arch)
            linears = [layer for layer in model.net if isinstance(layer, nn.Linear)]
            with torch.no_grad():
                for layer, w, b in zip(linears, self.weights, self.biases):
                    layer.weight.copy_(w[s].T)
                    layer.bias.copy_(b[s, 0])
            out.append(model)
        return out


def cut(archs: Sequence[Arch], rows: int, parts: int = 1, by: Callable[[int], Any] = lambda i: None) -> list[list[int]]:
    """Models 0..n-1 (architectures `archs`) cut into the stacks of one batch job: a stack holds one
    architecture and one `by` key (what else its models must share, e.g. their data's shape), in first-seen
    order, each group cut by `stacks` into at least `parts` stacks for the lanes (`job.side_by_side`)."""
    groups: dict[tuple[Arch, Any], list[int]] = {}
    for i, arch in enumerate(archs):
        groups.setdefault((arch, by(i)), []).append(i)
    return [s for (arch, _), group in groups.items() for s in stacks(group, arch, rows, parts=parts)]


def stacks(group: list[int], arch: Arch, rows: int, budget: int = STACK_BYTES, parts: int = 1) -> list[list[int]]:
    """`group` cut into stacks whose widest activation (S x rows x widest layer, float32) stays within `budget`:
    a bigger stack leaves the cache and each of its models trains slower (a student step: 8.2 ms a model in a
    stack of 8, 11.1 ms in one of 32 or 100, one core). At least `parts` stacks where there are enough models,
    for lanes to share (`job.side_by_side`). Any cut gives the same bytes (nothing mixes across seeds)."""
    widest = max(arch.in_dim, *arch.hidden, N_CLASSES + arch.aux_logits)
    size = max(1, min(budget // (rows * widest * 4), -(-len(group) // max(1, parts))))
    return [group[i:i + size] for i in range(0, len(group), size)]


@torch.no_grad()
def stack_outputs(stack: Stack, x: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """(S, N, in) -> (S, N, 10 + m) in fixed-size chunks of inputs: memory stays bounded for many seeds, and
    a seed's chunks have the same shapes in any batch."""
    return torch.cat([stack(x[:, i:i + chunk]) for i in range(0, x.shape[1], chunk)], dim=1)


def _epoch_order(n: int, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """(S, n): each model's own shuffle of its n examples."""
    return torch.stack([torch.randperm(n, generator=g) for g in gens])


def _adam(stack: Stack, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(stack.trainable().parameters(), lr=lr)


def _step(opt: torch.optim.Optimizer, per_model: torch.Tensor) -> None:
    """One Adam step for every model: the sum of per-model losses has each model's own gradient."""
    opt.zero_grad()
    per_model.sum().backward()
    opt.step()


def _schedule(n: int, epochs: int, batch_size: int) -> list[tuple[int, int]]:
    """(epoch, first example) of every minibatch: `epochs` passes over n examples."""
    return [(e, start) for e in range(epochs) for start in range(0, n, batch_size)]


def train_on_labels(stack: Stack, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
                    gens: Sequence[torch.Generator], progress: Progress = _quiet) -> torch.Tensor:
    """Cross-entropy on the 10 class logits only (the auxiliary logits get no gradient signal of their own),
    every model on its own shuffle of the same labelled data. Returns each model's last batch loss, (S,)."""
    opt = _adam(stack, lr)
    loss = torch.zeros(stack.size)
    plan = _schedule(len(x), epochs, batch_size)
    order = torch.empty(0, dtype=torch.long)
    for _, start in progress(plan, len(plan), f"teacher x{stack.size}"):
        if start == 0:
            order = _epoch_order(len(x), gens)
        idx = order[:, start:start + batch_size]  # (S, b)
        logits = stack(x[idx])[..., :N_CLASSES]  # (S, b, 10)
        loss = F.cross_entropy(logits.transpose(1, 2), y[idx], reduction="none").mean(1)
        _step(opt, loss)
    return loss.detach()


def distill_aux(stack: Stack, x: torch.Tensor, target: torch.Tensor, source: torch.Tensor, *, epochs: int, lr: float,
                batch_size: int, loss: str, gens: Sequence[torch.Generator], progress: Progress = _quiet) -> torch.Tensor:
    """Each model matches its teacher's auxiliary logits on transfer inputs only: KL between their softmaxes
    (the paper) or MSE on the raw logits. Model s learns from dataset `source[s]` of x (D, N, in) and
    target (D, N, m), in `epochs` passes over it in its own order. Returns each model's last batch loss, (S,)."""
    opt = _adam(stack, lr)
    value = torch.zeros(stack.size)
    n = x.shape[1]
    rows = source[:, None]  # (S, 1)
    plan = _schedule(n, epochs, batch_size)
    order = torch.empty(0, dtype=torch.long)
    for _, start in progress(plan, len(plan), f"student x{stack.size}"):
        if start == 0:
            order = _epoch_order(n, gens)
        idx = order[:, start:start + batch_size]
        pred = stack(x[rows, idx])[..., N_CLASSES:]  # (S, b, m)
        value = aux_loss(pred, target[rows, idx], loss)
        _step(opt, value)
    return value.detach()


def aux_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-model loss over a batch, (S,): KL(teacher || student) of the softmaxes, averaged over the batch
    (the paper's), or the mean squared error of the raw logits."""
    if kind == "kl":
        kl = F.kl_div(F.log_softmax(pred, -1), F.log_softmax(target, -1), log_target=True, reduction="none")
        return kl.sum(-1).mean(-1)
    return ((pred - target) ** 2).mean((1, 2))


@torch.no_grad()
def accuracy(model: AuxMLP, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.class_logits(x).argmax(-1) == y).float().mean())
