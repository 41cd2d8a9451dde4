"""Artifacts on disk: atomic writes, DVC-identical digests, and the metadata each artifact carries.

Every artifact is a directory (a dataset, a model, a metrics table) holding `sublim.json`: what produced it,
from which parents (by digest), with which resolved params. Its identity is its DVC md5, so MLflow, DVC and
the Prefect cache all name the same bytes the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dvc_data.hashfile.hash import file_md5
from dvc_data.hashfile.hash_info import HashInfo
from dvc_data.hashfile.meta import Meta
from dvc_data.hashfile.tree import Tree

META = "sublim.json"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


class ArtifactError(FileNotFoundError):
    """A missing or unreadable artifact; the message names the path."""


@dataclass(frozen=True)
class ArtifactMeta:
    """What an artifact is and where it came from. Written inside the artifact, so it travels with it."""

    kind: str  # "model" | "dataset" | "metrics"
    job: str  # the job that produced it, e.g. "mlp.student@s0.g1.trait"
    step: str
    params: dict[str, Any]  # the resolved params the step used
    parents: dict[str, str]  # input name -> digest
    lineage: dict[str, Any] = field(default_factory=dict)  # model tags: role, init_from, data_from, trait...

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)


def write_meta(directory: Path, meta: ArtifactMeta) -> None:
    (directory / META).write_text(meta.to_json(), encoding="utf-8")


def read_meta(directory: Path) -> ArtifactMeta:
    path = Path(directory) / META
    if not path.is_file():
        raise ArtifactError(f"{directory}: not a sublim artifact (no {META}); was it produced by sublim?")
    try:
        return ArtifactMeta(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: corrupt artifact metadata ({exc})") from None


def verify(directory: Path) -> None:
    """Every weights/table/JSON file of an artifact parses: a truncated or overwritten file is an error naming
    it, before any step reads it (safetensors headers only: cheap, and never unpickles anything)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(directory).rglob("*")):
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), "pt") as fh:
                    fh.keys()
            elif file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ArtifactError(f"{file}: corrupt or unreadable ({type(exc).__name__}: {exc})") from None


def digest(path: Path) -> str:
    """DVC's md5 of a file, or of a directory ("<md5>.dir"), exactly as dvc.lock records it."""
    path = Path(path)
    if path.is_file():
        return file_md5(str(path))
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such artifact")
    tree = Tree()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).parts
        tree.add(rel, Meta(size=file.stat().st_size), HashInfo("md5", file_md5(str(file))))
    tree.digest()
    return tree.hash_info.value


@contextlib.contextmanager
def atomic_dir(dest: Path, aside: list[Replaced] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `dest` in one rename.

    A crash (or kill) inside the block leaves `dest` as it was, plus a `.tmp-*` sibling that
    `clean_partials` removes on the next run. An existing `dest` is moved aside, not deleted, until the
    new one is in place; with `aside`, it stays aside (a `Replaced` appended there) until the caller keeps
    the new output or puts the old one back.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{TMP_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        old = dest.parent / f"{OLD_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}" if dest.exists() else None
        if old is not None:
            os.replace(dest, old)
        os.replace(tmp, dest)
        if aside is not None:
            aside.append(Replaced(dest, old))
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Replaced:
    """A published output and the one it replaced (None: there was none), kept aside until settled."""

    dest: Path
    old: Path | None

    def keep(self) -> None:
        """The new output stands: drop the old one."""
        if self.old is not None:
            shutil.rmtree(self.old, ignore_errors=True)

    def undo(self) -> None:
        """The job failed after publishing (its recording did): put back what was there before, or nothing.
        A crash in here leaves `.old-*`/`.tmp-*` siblings that `clean_partials` removes (and the job reruns)."""
        if self.dest.exists():
            trash = self.dest.parent / f"{TMP_PREFIX}{self.dest.name}-{uuid.uuid4().hex[:8]}"
            os.replace(self.dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        if self.old is not None:
            os.replace(self.old, self.dest)


def clean_partials(root: Path) -> list[Path]:
    """Remove leftovers of interrupted writes (`.tmp-*`, `.old-*`) under `root`; return what was removed."""
    removed = []
    if not Path(root).exists():
        return removed
    for path in sorted(Path(root).rglob("*")):
        if path.name.startswith((TMP_PREFIX, OLD_PREFIX)) and path.exists():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON file write (temp + rename), for metrics files that live outside artifact dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _fsync_tree(directory: Path) -> None:
    for file in directory.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())


def inside(root: Path, path: Path) -> Path:
    """`path` resolved under `root`; refuse anything that escapes it (`../`, absolute paths, symlinks out)."""
    root = Path(root).resolve()
    full = (root / path).resolve()
    if full != root and root not in full.parents:
        raise ValueError(f"{path}: escapes the project directory {root}")
    return full
