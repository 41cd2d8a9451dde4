"""Each job's code dependencies, derived rather than listed: the one answer both DVC and Prefect's cache use.

A job depends on the module defining its step and on the modules of the plug-ins its params choose (backend,
data kind, trait), and on everything those import within their own packages (sublim's, a plug-in's),
transitively: imports at the top of a file and inside functions alike (read from the AST, never by running the
code), a package's `__init__` for each module under it, and the YAML resource beside each module (`maths.py`
reads `maths.yaml`). The files hashed are the ones that run (wherever the package is installed). Third-party
libraries are pinned by the lock file, not here.

DVC sees them through one small file per step, `.sublim/code/<step>.txt` (each dependency with its md5),
written by the `code` stage at the head of dvc.yaml and by every flow run; a stage depends on its step's file,
so it reruns exactly when code it uses changed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel

from sublim.job import Job, get_step
from sublim.registry import PluginSpec

MANIFESTS = Path(".sublim/code")


def module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).resolve()


@lru_cache(maxsize=4096)
def _imports(path: Path, mtime: float) -> tuple[str, ...]:
    """Modules a file imports anywhere in it (absolute names; `from a import b` yields `a` and `a.b`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(path)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return tuple(found)


def _package_of(path: Path) -> str:
    """The dotted package a file belongs to, from the `__init__.py` files above it."""
    parts = []
    here = path.parent
    while (here / "__init__.py").exists():
        parts.insert(0, here.name)
        here = here.parent
    return ".".join(parts)


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ too."""
    bits = name.split(".")
    return [".".join(bits[:i]) for i in range(1, len(bits) + 1)]


def closure(modules: Iterable[str]) -> dict[str, Path]:
    """Every file the modules run when imported, transitively, within their own top-level packages (sublim's,
    a plug-in's), plus the YAML beside each: {path relative to the package's parent: the file that runs}."""
    modules = list(modules)
    scope = {m.split(".")[0] for m in modules}
    seen: set[str] = set()
    files: dict[str, Path] = {}
    todo = [m for name in modules for m in _with_parents(name)]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in scope:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        base = path.parents[len(name.split(".")) - (0 if path.name == "__init__.py" else 1)]
        files[str(path.relative_to(base))] = path
        resource = path.with_suffix(".yaml")
        if resource.is_file():
            files[str(resource.relative_to(base))] = resource
        todo += [m for imp in _imports(path, path.stat().st_mtime) for m in _with_parents(imp) if m not in seen]
    return dict(sorted(files.items()))


def plugin_modules(params: BaseModel) -> set[str]:
    """Modules of the plug-ins a job's params choose (searching nested sections and lists)."""
    found: set[str] = set()

    def visit(value: object) -> None:
        if isinstance(value, PluginSpec) and value.plugin is not None:
            found.add(value.plugin.__module__)
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                visit(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(params)
    return found


def job_modules(job: Job) -> frozenset[str]:
    """The modules a job's code starts from: its step's and its plug-ins'."""
    return frozenset({get_step(job.step_name).module, *plugin_modules(job.params)})


def job_files(job: Job) -> dict[str, Path]:
    """The job's code dependencies: {package-relative path: file}."""
    return dict(_cached_closure(job_modules(job)))


_CLOSURES: dict[frozenset[str], tuple[dict[str, Path], dict[Path, float | None]]] = {}


def _cached_closure(modules: frozenset[str]) -> dict[str, Path]:
    """`closure`, remembered per module set while none of its files changed: a flow's ~800 jobs (every pipeline's,
    for the manifests, then one cache key per job) start from a few dozen sets, and walking one costs ~50
    import lookups. An edited file (a new import) has a new mtime, so the walk is redone."""
    hit = _CLOSURES.get(modules)
    if hit is not None and all(_mtime(path) == seen for path, seen in hit[1].items()):
        return hit[0]
    files = closure(modules)
    _CLOSURES[modules] = (files, {path: _mtime(path) for path in files.values()})
    return files


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def manifest(files: dict[str, Path]) -> str:
    """`<md5>  <path>` per file, like md5sum: readable, and changes exactly when one of the files does."""
    return "".join(f"{_md5(path, path.stat().st_mtime)}  {rel}\n" for rel, path in sorted(files.items()))


@lru_cache(maxsize=4096)
def _md5(path: Path, mtime: float) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def job_digest(job: Job) -> str:
    return hashlib.md5(manifest(job_files(job)).encode()).hexdigest()


def warm(jobs: Iterable[Job]) -> None:
    """Walk these jobs' code now; the walks and file digests are remembered, so the flow's manifests and cache
    keys find them done. The CLI does it while Prefect's server boots (~0.6 s for every pipeline's jobs)."""
    for job in jobs:
        job_digest(job)


def write_manifests(jobs: Iterable[Job], root: Path) -> list[Path]:
    """One manifest per step (the union over its jobs), rewritten only when it changed (DVC then sees no
    change either)."""
    root = Path(root).resolve()
    by_step: dict[str, dict[str, Path]] = {}
    for job in jobs:
        by_step.setdefault(job.step_name, {}).update(job_files(job))
    written = []
    for step, files in sorted(by_step.items()):
        path = root / MANIFESTS / f"{step}.txt"
        text = manifest(files)
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        written.append(path)
    return written


def pipeline_jobs(cfg, planners: dict) -> list[Job]:
    """Every job of every pipeline params.yaml can plan (the matrix needs a trait with a setting to vary: with
    another trait it is skipped here, and refused when asked for by name)."""
    from sublim.config import ConfigError

    jobs = []
    for planner in planners.values():
        try:
            jobs += planner(cfg).jobs
        except ConfigError:
            continue
    return jobs


def manifest_path(step: str) -> Path:
    return MANIFESTS / f"{step}.txt"
