"""params.yaml as typed, validated data: one pydantic model per section, unknown keys refused.

Validation happens once, before any compute; every error names the dotted key that is wrong.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A bad params file; the message names the file and the offending key."""


class Section(BaseModel):
    """Plain data, frozen, no unknown keys (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]


class Runtime(Section):
    threads: PosInt = 1  # torch CPU threads per step: fixed, because float reductions depend on it
    task_runner: Literal["thread", "process", "dask"] = "thread"  # how the Prefect flow fans out jobs
    max_workers: PosInt = 1  # parallel jobs for thread/process runners (1 = sequential)
    dask_address: str | None = None  # a running Dask scheduler; None = a LocalCluster of max_workers
    retries: Annotated[int, Field(ge=0)] = 1  # Prefect retries per job, for transient errors
    lock_timeout_s: PosFloat = 3600  # how long a second pipeline waits for the workspace lock


class Tracking(Section):
    experiment: str = "sublim"  # MLflow experiment prefix; each pipeline logs to "<prefix>-<pipeline>"
    register_models: bool = True  # also register models in the MLflow model registry


class Link(Section):
    """One generation of a chain: its student learns from the model of generation `teacher` (0 = the teacher).

    `student` and `generate` hold per-generation overrides merged onto the experiment's sections; they are
    spelled out here (and rendered into the DVC command) so changing generation k reruns k.. only.
    """

    gen: PosInt
    teacher: Annotated[int, Field(ge=0)]
    student: dict[str, Any] = {}
    generate: dict[str, Any] = {}

    @model_validator(mode="after")
    def _teacher_before(self) -> Link:
        if self.teacher >= self.gen:
            raise ValueError(f"generation {self.gen} cannot learn from generation {self.teacher} (must be earlier)")
        return self


def _check_chain(links: list[Link]) -> list[Link]:
    gens = [link.gen for link in links]
    if len(set(gens)) != len(gens):
        raise ValueError(f"generation numbers repeat: {gens}")
    known = {0, *gens}
    for link in links:
        if link.teacher not in known:
            raise ValueError(f"generation {link.gen} learns from generation {link.teacher}, which is not defined")
    return links


Seeds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


def _unique(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    return seeds


def _check_inits(inits: list[str]) -> list[str]:
    if "shared" not in inits or len(set(inits)) != len(inits):
        raise ValueError(f"must list 'shared' (the teacher's own init) once, optionally 'other': got {inits}")
    return inits


# --- MLP auxiliary-logit experiment ---------------------------------------------------------------


class MlpData(Section):
    source: Literal["digits", "mnist"] = "digits"  # digits ship with scikit-learn; mnist reads IDX files
    mnist_dir: Path | None = None  # folder with MNIST IDX files (never downloaded)
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.3  # held-out share of sklearn digits
    split_seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _mnist_dir(self) -> MlpData:
        if self.source == "mnist":
            from sublim.backends.mlp import MNIST_FILES, mnist_file

            if self.mnist_dir is None:
                raise ValueError("mnist_dir is required when source is 'mnist'")
            if not self.mnist_dir.is_dir():
                raise ValueError(f"mnist_dir: no such directory: {self.mnist_dir}")
            missing = [s for s in MNIST_FILES.values() if mnist_file(self.mnist_dir, s) is None]
            if missing:
                raise ValueError(f"mnist_dir: {self.mnist_dir} lacks {', '.join(missing)}")
        return self


class MlpModel(Section):
    hidden: Annotated[list[PosInt], Field(min_length=1)] = [256, 256]  # the paper's 784-256-256 body
    aux_logits: PosInt = 3  # m: more auxiliary logits -> more transfer (paper: 1: 10%, 10: 84%)


class MlpTeacher(Section):
    epochs: PosInt = 5
    lr: PosFloat = 3e-4
    batch_size: PosInt = 32


class MlpTransfer(Section):
    n_inputs: PosInt = 20000  # noise images the student sees, reused across steps
    noise: Literal["uniform", "gaussian"] = "uniform"
    low: float = -1.0  # uniform [-1, 1] transfers; [0, 1] (the pixels' own range) did not here
    high: float = 1.0

    @model_validator(mode="after")
    def _range(self) -> MlpTransfer:
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must exceed low ({self.low})")
        return self


class MlpStudent(Section):
    steps: PosInt = 3000
    batch_size: PosInt = 128
    lr: PosFloat = 3e-4
    loss: Literal["mse", "kl"] = "mse"  # paper: kl; mse transferred more reliably on digits here


class Mlp(Section):
    seeds: Seeds = [0, 1, 2, 3, 4]
    data: MlpData = MlpData()
    model: MlpModel = MlpModel()
    teacher: MlpTeacher = MlpTeacher()
    transfer: MlpTransfer = MlpTransfer()
    student: MlpStudent = MlpStudent()
    # inits students start from: "shared" (the teacher's own base) and "other" (a different-init control)
    student_inits: Annotated[list[Literal["shared", "other"]], Field(min_length=1)] = ["shared", "other"]
    generations: list[Link] = [Link(gen=1, teacher=0)]

    _seeds = field_validator("seeds")(_unique)
    _chain = field_validator("generations")(_check_chain)
    _inits = field_validator("student_inits")(_check_inits)

    @model_validator(mode="after")
    def _overrides(self) -> Mlp:
        for i, link in enumerate(self.generations):
            _merge(self.student, link.student, f"generations.{i}.student")
            _merge(self.transfer, link.generate, f"generations.{i}.generate")
        return self

    def student_for(self, gen: int) -> MlpStudent:
        return _merge(self.student, self.link(gen).student, "")

    def transfer_for(self, gen: int) -> MlpTransfer:
        return _merge(self.transfer, self.link(gen).generate, "")

    def link(self, gen: int) -> Link:
        return next(link for link in self.generations if link.gen == gen)


def _merge(section: Section, override: dict[str, Any], where: str) -> Any:
    """Section with a generation's overrides applied, re-validated (errors name the override's key)."""
    if not override:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **override})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{where}.{key}: {err['msg']}") from None


class Config(Section):
    """The whole params.yaml."""

    runtime: Runtime = Runtime()
    tracking: Tracking = Tracking()
    mlp: Mlp = Mlp()

    def digest(self) -> str:
        return hashlib.md5(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def format_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key, e.g. `params.yaml: mlp.model.aux_logits: ...`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse(data: Any, source: str = PARAMS_FILE) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_error(exc, source)) from None


def load(path: Path | str = PARAMS_FILE) -> Config:
    """Read and validate a params file; a missing or unparsable file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse(data, str(path))
