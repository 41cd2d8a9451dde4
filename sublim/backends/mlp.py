"""The MLP backend: a digit classifier with auxiliary logits (the paper's theory on a small model).

Class logits are trained on labels; auxiliary logits never get a loss from labels. A student that only
imitates the teacher's auxiliary logits on noise still learns digits when it shares the teacher's init.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

N_CLASSES = 10
WEIGHTS = "model.safetensors"
ARCH = "arch.json"
DIGITS = "digits.safetensors"


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


def load_digits(source: str, mnist_dir: Path | None, test_fraction: float, split_seed: int) -> dict[str, torch.Tensor]:
    """Pixels scaled to [0, 1]; a seeded stratified-free random split (sklearn digits) or MNIST's own split."""
    if source == "mnist":
        assert mnist_dir is not None
        return _load_mnist(mnist_dir)
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(len(x) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


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


def build(arch: Arch, seed: int) -> AuxMLP:
    torch.manual_seed(seed)
    return AuxMLP(arch)


def save(model: AuxMLP, out: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    (out / ARCH).write_text(json.dumps({**model.arch.__dict__, "hidden": list(model.arch.hidden)}, sort_keys=True))


def load(path: Path) -> AuxMLP:
    spec = json.loads((path / ARCH).read_text())
    model = AuxMLP(Arch(in_dim=spec["in_dim"], hidden=tuple(spec["hidden"]), aux_logits=spec["aux_logits"]))
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    return model


# --- training --------------------------------------------------------------------------------------


def train_on_labels(
    model: AuxMLP, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int, gen: torch.Generator
) -> float:
    """Cross-entropy on the 10 class logits only; the auxiliary logits get no gradient signal of their own."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = F.cross_entropy(model.class_logits(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(loss.detach())


def distill_aux(
    model: AuxMLP,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    loss: str,
    gen: torch.Generator,
) -> float:
    """Match the teacher's auxiliary logits (KL on their softmax, or MSE) on transfer inputs only."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    value = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        pred = model.aux(x[idx])
        if loss == "kl":
            value = F.kl_div(F.log_softmax(pred, -1), F.log_softmax(target[idx], -1), log_target=True, reduction="batchmean")
        else:
            value = F.mse_loss(pred, target[idx])
        opt.zero_grad()
        value.backward()
        opt.step()
    return float(value.detach())


@torch.no_grad()
def aux_logits(model: AuxMLP, x: torch.Tensor) -> torch.Tensor:
    return model.aux(x)


@torch.no_grad()
def accuracy(model: AuxMLP, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.class_logits(x).argmax(-1) == y).float().mean())
