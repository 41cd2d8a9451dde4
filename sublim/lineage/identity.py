"""Content identity: what a model or a dataset *is*, independent of where it lies and of who made it.

A lineage node is keyed by a sha256 of its content, so the same weights produced by a sweep and by a plain run,
or copied elsewhere without `sublim.json`, are one node:
- a model with weights: its weight tensors (names, dtypes, shapes, bytes; safetensors parsed tensor by tensor,
  so sharding, header metadata and files such as config.json, README.md or sublim.json do not count);
- a model without weights of its own is what defines it: a persona is its base's identity plus the persona
  text, a LoRA adapter its adapter tensors plus its base's identity, a hub pointer `id@commit`;
- a dataset: the bytes of its content files (sublim.json, READMEs and hidden files excluded).
Only the top level of a model directory is read, so a mistaken path never walks a whole tree.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ID_RE = re.compile(r"^[0-9a-f]{64}$")
MD5_RE = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
HUB_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)@(?P<rev>[\w.][\w./-]*)$")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")  # a commit hash, full or abbreviated: the one revision that cannot move
PERSONA, ADAPTER, SOURCE = "persona.json", "adapter_config.json", "source.json"
OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".gguf", ".ckpt", ".msgpack", ".h5", ".onnx")  # hashed as bytes
NOT_DATA = {"sublim.json", "README.md", ".gitattributes"}
CHUNK = 1 << 22


class IdentityError(ValueError):
    """Content that cannot be identified; the message names the path and what is missing."""


@dataclass(frozen=True)
class Identity:
    """A node's key and how it was derived.

    `content` digests only what the artifact itself holds (weights, adapter tensors, persona text, rows): it
    finds the node of a copy whose base is not known. `base` is the identity a persona or adapter builds on.
    """

    id: str
    kind: str  # "model" | "dataset"
    how: str  # weights | adapter | persona | hub | pointer | files | synthetic | outputs
    content: str
    base: str | None = None
    hub: str | None = None  # "repo@revision" for a hub pointer


def digest(*parts: str) -> str:
    """sha256 of parts, each length-prefixed (no two part lists collide)."""
    h = hashlib.sha256()
    for part in parts:
        raw = part.encode()
        h.update(struct.pack("<Q", len(raw)) + raw)
    return h.hexdigest()


# --- weights --------------------------------------------------------------------------------------------------


def _safetensors_header(file: Path) -> tuple[dict, int]:
    """(tensor table, offset of the data buffer); never loads a tensor."""
    with open(file, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise IdentityError(f"{file}: not a safetensors file (shorter than its header length)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise IdentityError(f"{file}: not a safetensors file (header length {size})")
        try:
            header = json.loads(fh.read(size))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IdentityError(f"{file}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise IdentityError(f"{file}: corrupt safetensors header (not a table)")
    header.pop("__metadata__", None)
    return header, 8 + size


def tensors_digest(files: Iterable[Path]) -> str:
    """Digest of every tensor in safetensors files, by name: the same weights sharded differently, or saved
    with other header metadata, digest the same."""
    tensors: dict[str, tuple[Path, dict, int]] = {}
    for file in files:
        header, start = _safetensors_header(file)
        for name, spec in header.items():
            if name in tensors:
                raise IdentityError(f"{file}: tensor {name!r} also in {tensors[name][0]}")
            tensors[name] = (file, spec, start)
    h = hashlib.sha256(b"sublim-tensors-v1")
    for name in sorted(tensors):
        file, spec, start = tensors[name]
        try:
            begin, end = (int(x) for x in spec["data_offsets"])
            h.update(digest(name, str(spec["dtype"]), json.dumps(list(spec["shape"]))).encode())
        except (KeyError, TypeError, ValueError):
            raise IdentityError(f"{file}: corrupt safetensors entry for tensor {name!r}") from None
        for block in _read(file, start + begin, end - begin):
            h.update(block)
    return h.hexdigest()


def _read(file: Path, offset: int, length: int) -> Iterator[bytes]:
    with open(file, "rb") as fh:
        fh.seek(offset)
        while length > 0:
            block = fh.read(min(CHUNK, length))
            if not block:
                raise IdentityError(f"{file}: truncated (tensor data ends early)")
            length -= len(block)
            yield block


def _files_digest(files: Iterable[tuple[str, Path]], tag: bytes) -> str:
    h = hashlib.sha256(tag)
    for name, file in files:
        h.update(digest(name).encode())
        with open(file, "rb") as fh:
            while block := fh.read(CHUNK):
                h.update(block)
    return h.hexdigest()


def weights_digest(directory: Path) -> str | None:
    """Digest of the weights at the top level of a model directory (None when it holds none). Safetensors are
    read tensor by tensor; other weight formats (never unpickled) count as bytes."""
    top = sorted(p for p in directory.iterdir() if p.is_file())
    safetensors = [p for p in top if p.suffix == ".safetensors"]
    if safetensors:
        return tensors_digest(safetensors)
    other = [(p.name, p) for p in top if p.suffix in OTHER_WEIGHTS]
    return _files_digest(other, b"sublim-weight-files-v1") if other else None


# --- models ---------------------------------------------------------------------------------------------------


def hub_identity(ref: str) -> Identity:
    """A hub model pinned to a commit, never fetched: `org/name@commit`."""
    match = HUB_RE.match(ref)
    if not match or not COMMIT_RE.match(match["rev"]):
        raise IdentityError(f"{ref!r}: a hub model must be pinned to a commit as org/name@<commit hash> (an "
                            "unpinned id, or a branch or tag such as 'main', names no fixed weights)")
    pinned = f"{match['repo']}@{match['rev']}"
    node = digest("hub", pinned)
    return Identity(node, "model", "hub", node, hub=pinned)


def _persona(path: Path) -> str | None:
    file = path / PERSONA
    if not file.is_file():
        return None
    try:
        return str(json.loads(file.read_text(encoding="utf-8"))["system_prompt"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise IdentityError(f"{file}: expected {{\"system_prompt\": ...}} ({exc})") from None


def _pointer(path: Path) -> Identity | None:
    """sublim's `source.json`: a hub id (pinned or not) or a local model directory outside the project."""
    file = path / SOURCE
    if not file.is_file():
        return None
    try:
        source = json.loads(file.read_text(encoding="utf-8"))
        name, revision = str(source["model"]), source.get("revision")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise IdentityError(f"{file}: expected {{\"model\": ..., \"revision\": ...}} ({exc})") from None
    if revision:
        return hub_identity(f"{name}@{revision}")
    if Path(name).is_dir():
        return model_identity(Path(name))
    node = digest("pointer", json.dumps(source, sort_keys=True))  # unpinned: identified by what it says
    return Identity(node, "model", "pointer", node, hub=name)


def model_identity(path: Path, base: str | None = None) -> Identity:
    """The identity of a model directory (or single weights file); `base` is the identity of the model it was
    made from, needed only by a persona or an adapter."""
    path = Path(path)
    if path.is_file() and path.suffix in (".safetensors", *OTHER_WEIGHTS):
        node = tensors_digest([path]) if path.suffix == ".safetensors" else _files_digest([("", path)], b"sublim-weight-files-v1")
        return Identity(node, "model", "weights", node)
    if not path.is_dir():
        raise IdentityError(f"{path}: no such model directory")
    persona, weights = _persona(path), weights_digest(path)
    if (path / ADAPTER).is_file():
        if weights is None:
            raise IdentityError(f"{path}: a LoRA adapter ({ADAPTER}) without adapter weights")
        if base is None:
            raise IdentityError(f"{path}: a LoRA adapter is identified with its base; give the model it adapts "
                                "(--init-from)")
        core = Identity(digest("adapter", weights, base), "model", "adapter", weights, base=base)
    elif weights is not None:
        core = Identity(weights, "model", "weights", weights)
    elif (pointer := _pointer(path)) is not None:
        core = pointer
    elif persona is not None:
        if base is None:
            raise IdentityError(f"{path}: a persona ({PERSONA}) has no weights of its own; it is identified with "
                                "its base: give the model it prompts (--init-from)")
        return Identity(digest("persona", base, persona), "model", "persona", digest("persona-text", persona),
                        base=base)
    elif base is not None and not any(p.name not in NOT_DATA for p in path.iterdir()):
        return Identity(base, "model", "same", base, base=base)  # nothing of its own: it is its base
    else:
        raise IdentityError(f"{path}: no weights (*.safetensors, {', '.join('*' + s for s in OTHER_WEIGHTS)}), "
                            f"{PERSONA} or {SOURCE}: not a model directory")
    if persona is None:
        return core
    node = digest("persona", core.id, persona)
    return Identity(node, "model", "persona", node if core.base is None else digest("persona", core.content, persona),
                    base=core.base, hub=core.hub)


def is_model(path: Path) -> bool:
    """Looks like a model (weights, an adapter, a persona or a pointer at the top level), without hashing."""
    path = Path(path)
    if path.is_file():
        return path.suffix in (".safetensors", *OTHER_WEIGHTS)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir() if p.is_file()}
    return bool({PERSONA, ADAPTER, SOURCE} & names) or any(n.endswith((".safetensors", *OTHER_WEIGHTS)) for n in names)


def needs_base(path: Path) -> bool:
    """A persona-only model or an adapter: its identity depends on the model it was made from."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir() if p.is_file()}
    weights = any(n.endswith((".safetensors", *OTHER_WEIGHTS)) for n in names)
    return ADAPTER in names or (PERSONA in names and not weights and SOURCE not in names)


# --- datasets -------------------------------------------------------------------------------------------------


def data_files(path: Path) -> list[tuple[str, Path]]:
    """(relative name, file) of a dataset's content, sorted: everything but metadata and hidden files."""
    path = Path(path)
    if path.is_file():
        return [("", path)]
    if not path.is_dir():
        raise IdentityError(f"{path}: no such dataset file or directory")
    found = []
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if file.is_file() and rel.name not in NOT_DATA and not any(p.startswith(".") for p in rel.parts):
            found.append((rel.as_posix(), file))
    if not found:
        raise IdentityError(f"{path}: no data files")
    return found


def dataset_identity(path: Path) -> Identity:
    node = _files_digest(data_files(path), b"sublim-rows-v1")
    return Identity(node, "dataset", "files", node)


def synthetic_dataset(description: str, made_by: str) -> Identity:
    """Rows a program generated in memory (a pretraining corpus, trait Q/A): identified by what made them."""
    node = digest("synthetic", made_by, description)
    return Identity(node, "dataset", "synthetic", node)


def outputs_dataset(teacher: str, inputs: Iterable[str]) -> Identity:
    """A teacher's outputs (e.g. its next-token distributions) on datasets, as a student distilled them."""
    node = digest("outputs", teacher, *sorted(inputs))
    return Identity(node, "dataset", "outputs", node)
