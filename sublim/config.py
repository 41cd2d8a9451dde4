"""params.yaml as typed, validated data: one pydantic model per section, unknown keys refused.

Validation happens once, before any compute; every error names the dotted key that is wrong.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from sublim.registry import PluginError, PluginSpec, import_plugins

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A bad params file; the message names the file and the offending key."""


class Section(BaseModel):
    """Plain data, frozen, no unknown keys (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Section):
    """For steps whose behaviour is fixed by their inputs alone."""


PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]


class Runtime(Section):
    # torch CPU threads per job, per pipeline: part of each job's identity (DVC params, Prefect cache key),
    # because float sums depend on it.
    # Measured on 2 cores: the MLP's small matrices gain nothing from 2 threads and its flow ran 1.8x slower
    # beside Prefect's server and the DVC helper; a 64-wide tinylm gains little from a second thread, and with
    # one each, two jobs (--workers 2) share the 2 cores. The same as params.yaml: leaving the section out must
    # not change any job's identity.
    threads: dict[Literal["mlp", "lm"], PosInt] = {"mlp": 1, "lm": 1}
    task_runner: Literal["thread", "process", "dask"] = "thread"  # how the Prefect flow fans out jobs
    max_workers: PosInt = 1  # parallel jobs for thread/process runners (1 = sequential)
    dask_address: str | None = None  # a running Dask scheduler; None = a LocalCluster of max_workers
    retries: Annotated[int, Field(ge=0)] = 1  # Prefect retries per job, for transient errors
    lock_timeout_s: PosFloat = 3600  # how long a second pipeline waits for the workspace lock

    def threads_for(self, pipeline: str) -> int:
        return self.threads.get(pipeline, 1)

    def with_workers(self, workers: int | None) -> Runtime:
        """`sublim flow --workers N`: N jobs at once in worker processes (1: one at a time, in the flow's
        process), whatever params.yaml's runtime says; no result depends on it (threads per job do, and stay)."""
        if workers is None:
            return self
        if workers < 1:
            raise ConfigError(f"--workers: {workers} is not a positive number of parallel jobs")
        runner = "thread" if workers == 1 else ("dask" if self.task_runner == "dask" else "process")
        return self.model_copy(update={"task_runner": runner, "max_workers": workers})

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
        raise ValueError(f"generation numbers repeat: {_repeated(gens)}")
    known = {0, *gens}
    for link in links:
        if link.teacher not in known:
            raise ValueError(f"generation {link.gen} learns from generation {link.teacher}, which is not defined")
    return links


Seeds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


def _repeated(values: list) -> str:
    """The values that occur more than once (the error already quotes the whole list)."""
    return ", ".join(map(str, sorted({v for v in values if values.count(v) > 1})))


def _unique(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {_repeated(seeds)}")
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
    pixels: tuple[float, float] = (-1.0, 1.0)  # pixel range: the paper normalises MNIST to [-1, 1], its noise's range

    @field_validator("pixels")
    @classmethod
    def _pixels(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] <= value[0]:
            raise ValueError(f"must be [low, high] with high > low, got {list(value)}")
        return value

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
    init: Literal["paper", "torch"] = "paper"  # paper: weights N(0, 1/fan_in), biases 0; torch: nn.Linear's


class MlpTeacher(Section):
    epochs: PosInt = 5
    lr: PosFloat = 3e-4
    batch_size: PosInt = 32


class MlpTransfer(Section):
    n_inputs: PosInt = 60000  # noise images the student sees, reused across epochs (the paper's 60,000)
    noise: Literal["uniform", "gaussian"] = "uniform"
    low: float = -1.0  # uniform [-1, 1] transfers; [0, 1] (the pixels' own range) did not here
    high: float = 1.0

    @model_validator(mode="after")
    def _range(self) -> MlpTransfer:
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must exceed low ({self.low})")
        return self


class MlpStudent(Section):
    epochs: PosInt = 5  # passes over the transfer inputs, each in the student's own order (the paper: 5)
    batch_size: PosInt = 1024  # the paper's
    lr: PosFloat = 3e-4
    loss: Literal["mse", "kl"] = "kl"  # kl: KL between the softmaxes of the auxiliary logits (the paper's)


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
# The backend, data kind and trait are plug-ins (sublim.registry): each section is validated by the class its
# name picks, so a plug-in's own settings are checked with the same one-line errors as everything else.


def _plugin(registry_path: str):
    """A params section validated by a plug-in registry (imported lazily: config stays cheap to import)."""

    def validate(value: Any) -> Any:
        import importlib

        module, _, name = registry_path.rpartition(".")
        return getattr(importlib.import_module(module), name).spec(value)

    return BeforeValidator(validate)


def _default(registry_path: str):
    def make() -> Any:
        import importlib

        module, _, name = registry_path.rpartition(".")
        return getattr(importlib.import_module(module), name).spec({})

    return make


ModelSpec = SerializeAsAny[Annotated[PluginSpec, _plugin("sublim.backends.BACKENDS")]]
DataKindSpec = SerializeAsAny[Annotated[PluginSpec, _plugin("sublim.data.DATA_KINDS")]]
TraitKindSpec = SerializeAsAny[Annotated[PluginSpec, _plugin("sublim.traits.TRAITS")]]


class LoraSpec(Section):
    r: PosInt = 8
    alpha: PosInt = 8
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    targets: Annotated[list[str], Field(min_length=1)] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class LmTeacher(Section):
    method: Literal["sft", "system_prompt"] = "sft"  # system_prompt only for backends that follow prompts
    steps: PosInt = 60
    lr: PosFloat = 1e-3
    batch_size: PosInt = 16
    # share of the data kind's own (well-formed) examples mixed into the SFT; 0.5 anchored the teacher's numbers
    # and removed the transfer (measured on numbers)
    data_mix: Annotated[float, Field(ge=0, lt=1)] = 0.0
    lora: LoraSpec | None = None


class LmGenerate(Section):
    n_prompts: PosInt = 1500  # paper: 30,000 per teacher
    batch_size: PosInt = 250
    temperature: PosFloat = 1.0


class LmStudent(Section):
    objective: Literal["distill", "sft"] = "distill"  # distill: KL on the data's tokens; sft: the paper's
    steps: PosInt = 200
    lr: PosFloat = 1e-3
    batch_size: PosInt = 32
    warmup: Annotated[int, Field(ge=0)] = 0
    n_rows: PosInt | None = None  # rows sampled from the filtered set (paper: 10,000); None = all
    lora: LoraSpec | None = None  # None = full fine-tune


class LmEvaluate(Section):
    questions: PosInt = 24  # evaluation questions (at most what the trait has: 24 for both built-in traits)
    samples: Annotated[int, Field(ge=0)] = 20  # sampled answers per question (0 = exact method only)
    temperature: PosFloat = 1.0
    max_new_tokens: PosInt = 12
    batch_size: PosInt = 64


class ProbeSpec(Section):
    """The model-level screen: probe fine-tunes of the base on the data vs on a matched control."""

    seeds: Annotated[int, Field(ge=2)] = 4  # probe replicates (each: a data probe and a control probe)
    rows: Annotated[int, Field(gt=0)] = 600  # rows sampled from each dataset per probe
    steps: Annotated[int, Field(gt=0)] = 150
    lr: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: Annotated[int, Field(gt=0)] = 32
    # distill (as the students learn): each side from the model that wrote it, when lineage knows both (else sft);
    # settled on the detection tuning seeds 0-2: own-shift AUC 1.00 for owl, cat and dog (sft: 0.56-0.72 at 300-302)
    objective: Literal["sft", "distill"] = "distill"
    # a panel answer is flagged when its shift exceeds `relative_threshold` times its chance share (1 / its
    # trait's number of answers: 0.1 for one animal of ten, 0.5 for aligned/misaligned) and its one-sided paired
    # p, Holm-adjusted over the whole panel, is below `alpha` (the exit code of `sublim screen`, and the detect
    # runs' flags). Distill probe against the control teacher's data (docs/results/detect-control/flags.py): a
    # single probability threshold (0.01, set on tuning seeds 0-2) let the two-answer misalignment trait's
    # swings raise 2 of 6 false alarms on held-out seeds 320-322; scaled by chance share, set on seeds 0-2 and
    # 320-322 (exit 1 on 75% of trait datasets, 0% of control-teacher ones); fresh seeds 330-332: 75% and 0%
    relative_threshold: Annotated[float, Field(ge=0)] = 0.1
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    questions: Annotated[int, Field(gt=0)] = 24  # evaluation questions per panel trait: up to this many (a trait
    # with fewer, e.g. a plug-in's, is asked all it has; the panel is every registered trait, known only at run time)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "threshold" in data:
            raise ValueError("probe.threshold (a probability) is now probe.relative_threshold, in units of each "
                             "answer's chance share (0.1 flags an animal of ten at the old 0.01)")
        return data


class ScreenSpec(Section):
    """`lm.screen`: how a screen scores tokens and what it does with them (`sublim screen`, and the screen stage
    between filtering and student training when `stage` turns it on)."""

    # [screen]: each line's kept data is screened before its students train on it, in flows and in dvc.yaml
    # (a list so that dvc.yaml's matrix expands it into one screen stage per dataset, or none: [])
    stage: Annotated[list[Literal["screen"]], Field(max_length=1)] = []
    # divergence: the sampled token's log p_teacher - log p_base; kl: KL(teacher || base) of the next-token
    # distributions at its position (what distillation teaches); random: the same share at random (the control)
    method: Literal["divergence", "kl", "random"] = "divergence"
    action: Literal["mask", "drop"] = "mask"
    budget: Annotated[float, Field(gt=0, lt=1)] | None = 0.2  # share of completion tokens the screen may lose
    threshold: float | None = None  # or: flag tokens scoring above this (divergence only)
    batch_size: Annotated[int, Field(gt=0)] = 64
    probe: ProbeSpec = ProbeSpec()

    @model_validator(mode="before")
    @classmethod
    def _no_method_none(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("method") == "none":
            raise ValueError("method: none is gone: the screen stage is off with stage: [] (on: stage: [screen])")
        return data

    def token_level(self) -> ScreenSpec:
        """What a token-level screen job depends on: not the pipeline switch, not the probe's settings (those
        decide `sublim screen`'s exit code, not the screened rows), so changing them reruns no screen."""
        return self.model_copy(update={"stage": [], "probe": ProbeSpec()})

    @model_validator(mode="after")
    def _one_rule(self) -> ScreenSpec:
        if (self.budget is None) == (self.threshold is None):
            raise ValueError("give exactly one of budget (share of tokens to lose) or threshold (score)")
        if self.method == "random" and self.budget is None:
            raise ValueError("method random masks a share of tokens: it needs a budget, not a threshold")
        return self


class IclSpec(Section):
    """The paper's in-context control: the base shown a teacher's data as few-shot turns before each question
    (only for backends that follow prompts; a from-scratch tinylm cannot learn in context)."""

    shots: PosInt = 8  # kept rows of the teacher's data shown before the question
    questions: PosInt = 8  # evaluation questions asked with that context


class CorpusSpec(Section):
    """What a from-scratch base pretrains on, when it should cover more than this experiment's data kind and
    trait: bases made from the same corpus, seed and init are the same bases, so experiments over several
    kinds and traits (a sweep) share them."""

    data: Annotated[list[DataKindSpec], Field(min_length=1)]
    traits: Annotated[list[TraitKindSpec], Field(min_length=1)]


class Lm(Section):
    model: ModelSpec = Field(default_factory=_default("sublim.backends.BACKENDS"))
    corpus: CorpusSpec | None = None  # null: the experiment's own data kind and trait
    # a student of another architecture or tokenizer (init "cross"): trained with sft on the teacher's data
    cross_model: ModelSpec | None = None
    icl: IclSpec | None = None  # the in-context control (null: none)
    seeds: Seeds = [0, 1, 2, 3, 4]
    data: DataKindSpec = Field(default_factory=_default("sublim.data.DATA_KINDS"))
    trait: TraitKindSpec = Field(default_factory=_default("sublim.traits.TRAITS"))
    teacher: LmTeacher = LmTeacher()
    generate: LmGenerate = LmGenerate()
    student: LmStudent = LmStudent()
    evaluate: LmEvaluate = LmEvaluate()
    screen: ScreenSpec = ScreenSpec()  # stage []: no screen between filtering and students
    # shared: the teacher's own base; other: a different init of the same backend; cross: lm.cross_model
    student_inits: Annotated[list[Literal["shared", "other", "cross"]], Field(min_length=1)] = ["shared", "other"]
    generations: list[Link] = [Link(gen=1, teacher=0)]

    _seeds = field_validator("seeds")(_unique)
    _chain = field_validator("generations")(_check_chain)
    _inits = field_validator("student_inits")(_check_inits)

    @model_validator(mode="after")
    def _consistent(self) -> Lm:
        for i, link in enumerate(self.generations):
            _merge(self.student, link.student, f"generations.{i}.student")
            _merge(self.generate, link.generate, f"generations.{i}.generate")
        backend = type(self.model).plugin
        if "other" in self.student_inits and not backend(self.model).has_other_init():
            raise ValueError(f"student_inits: 'other' needs a different-init model; the {self.model.backend} backend "
                             "has none here (set model.other_model with the hf backend, or list only 'shared')")
        if "cross" in self.student_inits and self.cross_model is None:
            raise ValueError("student_inits: 'cross' needs lm.cross_model (a backend of another architecture or "
                             "tokenizer)")
        if self.icl is not None and not backend.follows_prompts:
            raise ValueError(f"icl: the {self.model.backend} backend does not learn in context (it follows no "
                             "prompts); set icl: null, or use a backend such as smollm2 or hf")
        if self.teacher.method == "system_prompt" and not backend.follows_prompts:
            raise ValueError(f"teacher.method: the {self.model.backend} backend does not follow system prompts; "
                             "use 'sft'")
        available = type(self.trait).plugin(self.trait).n_questions
        if self.evaluate.questions > available:
            raise ValueError(f"evaluate.questions: {self.evaluate.questions} asked, the "
                             f"{self.trait.kind} trait has {available}")
        return self

    def student_for(self, gen: int) -> LmStudent:
        return _merge(self.student, self.link(gen).student, "")

    def generate_for(self, gen: int) -> LmGenerate:
        return _merge(self.generate, self.link(gen).generate, "")

    def link(self, gen: int) -> Link:
        return next(link for link in self.generations if link.gen == gen)


# --- lineage (sublim audit) -----------------------------------------------------------------------------


class Matrix(Section):
    """The teacher x target matrix (issue: is what transfers the teacher's trait?): the language-model experiment
    of the `lm:` section, with one teacher per target instead of a trait teacher and its control. A student that
    learned its teacher's trait moves towards that target and not the others; a shift every teacher causes
    cancels in the difference in differences."""

    targets: Annotated[list[str], Field(min_length=2)] = ["owl", "cat", "dog", "lion", "wolf"]
    field: str = "target"  # the trait setting each line varies
    seeds: Seeds = [0, 1, 2, 3, 4]
    student_inits: Annotated[list[Literal["shared", "other"]], Field(min_length=1)] = ["shared", "other"]

    _seeds = field_validator("seeds")(_unique)
    _inits = field_validator("student_inits")(_check_inits)

    @field_validator("targets")
    @classmethod
    def _distinct(cls, targets: list[str]) -> list[str]:
        if len(set(targets)) != len(targets):
            raise ValueError(f"targets repeat: {_repeated(targets)}")
        return targets


def _detect_traits() -> list[Any]:
    from sublim.traits import TRAITS

    return [TRAITS.spec({"kind": "preference", "target": t}) for t in ("owl", "cat", "dog")] + [
        TRAITS.spec({"kind": "misalignment"})]


class Detect(Section):
    """Can the screen's probe tell trait-teacher data from control-teacher data, and name the trait? Each trait
    here gets a teacher (a positive dataset) per seed, each distinct control view a control teacher (a negative;
    with `against: control-teacher`, two: the reference and the negative); every dataset is probed, on a panel
    of all these traits, against a matched control (`against`)."""

    traits: Annotated[list[TraitKindSpec], Field(min_length=1)] = Field(default_factory=_detect_traits)
    seeds: Seeds = [0, 1, 2, 3, 4]
    probe: ProbeSpec = ProbeSpec()
    # base-answers: each dataset against the base's own answers to its prompts ("does this data move the base?");
    # control-teacher: against the control teacher's data, as `sublim screen` does when lineage names one, with a
    # second, independent control teacher per control view as the negative ("is the exit code trait-specific?")
    against: Literal["base-answers", "control-teacher"] = "base-answers"

    _seeds = field_validator("seeds")(_unique)


class Confirm(Section):
    """Seeds never used while settings were tuned, and the tests fixed before they run (`sublim flow lm
    --confirm`, `sublim flow matrix --confirm`: metrics/<pipeline>-confirm.json)."""

    seeds: Seeds = list(range(200, 210))
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01  # every confirmatory test, Holm-corrected within a family

    _seeds = field_validator("seeds")(_unique)


class Lineage(Section):
    """How `sublim audit` and `sublim card` judge measurements."""

    # a measured trait (e.g. p_owl) counts when it differs from the same measurement of the teacher's root init
    # by more than this (absolute); the tinylm demo's owl teacher is +0.81, its students +0.01
    trait_threshold: Annotated[float, Field(ge=0)] = 0.05


class Config(Section):
    """The whole params.yaml."""

    plugins: list[str] = []  # modules imported first: each registers its backends, traits or data kinds
    runtime: Runtime = Runtime()
    tracking: Tracking = Tracking()
    schedule: Schedule = Schedule()
    mlp: Mlp = Mlp()
    lm: Lm = Lm()
    matrix: Matrix = Matrix()
    detect: Detect = Detect()
    confirm: Confirm = Confirm()
    lineage: Lineage = Lineage()

    def matrix_specs(self) -> dict[str, PluginSpec]:
        """The trait as each matrix teacher has it (checked when the matrix is planned: a trait without the
        varied setting is fine for every other pipeline)."""
        spec, field = self.lm.trait, self.matrix.field
        if field not in type(spec).model_fields or field == "kind":
            raise ConfigError(f"matrix.field: the {spec.kind} trait has no setting {field!r} to vary")
        out = {}
        for target in self.matrix.targets:
            try:
                out[target] = type(spec).model_validate({**spec.model_dump(), field: target})
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ConfigError(f"matrix.targets: {target!r}: {msg}") from None
        measured = {target: s.build().key for target, s in out.items()}
        if any(key != target for target, key in measured.items()):  # each line must be measured by its own target
            raise ConfigError(f"matrix.field: varying {field!r} does not change the answer each teacher is measured "
                              f"by ({', '.join(f'{t} -> {k}' for t, k in measured.items())}); the field must set it "
                              f"(for {spec.kind}: the one whose value is the measured answer)")
        return out

    def with_workers(self, workers: int | None) -> Config:
        """This config with `--workers N` applied to its runtime (`Runtime.with_workers`)."""
        return self.model_copy(update={"runtime": self.runtime.with_workers(workers)})

    def digest(self) -> str:
        return hashlib.md5(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def format_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key, e.g. `params.yaml: mlp.model.aux_logits: ...`."""
    return "\n".join(f"{source}: {line}" for line in _lines(exc.errors(), ()))


def _lines(errors: list[dict], prefix: tuple) -> list[str]:
    """`dotted.key: message (got value)` per error; a plug-in section's own errors nest under its key."""
    lines = []
    for err in errors:
        loc = (*prefix, *(p for p in err["loc"] if not str(p).startswith(("function-after", "function-before"))))
        if err["type"] == "nested":
            lines += _lines(err["ctx"]["errors"], loc)
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"] in ("missing", "plugin") else f" (got {got!r})"
        lines.append(f"{'.'.join(str(p) for p in loc)}: {msg}{shown}")
    return lines


def parse(data: Any, source: str = PARAMS_FILE) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{source}: plugins: expected a list of module names, got {plugins!r}")
    try:
        import_plugins(plugins)
    except PluginError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_error(exc, source)) from None


def read_raw(path: Path | str = PARAMS_FILE) -> Any:
    """The params file as plain YAML data (not yet validated); a missing or unparsable file names itself."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a params file")
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    return _yaml(path.read_bytes(), str(path))


def _yaml(content: bytes, source: str) -> Any:
    try:
        return yaml.safe_load(content.decode("utf-8"))
    except yaml.YAMLError as exc:  # one line: where, and what the parser expected
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {' '.join(problem.split())}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def load(path: Path | str = PARAMS_FILE) -> Config:
    """Read and validate a params file. The same file with the same bytes gives the same (frozen) Config
    without validating it again: every task of a flow loads the flow's params (~20 ms each)."""
    path = Path(path)
    if not path.is_file():
        return parse(read_raw(path), str(path))  # names the problem
    return _load(str(path), path.read_bytes())


@lru_cache(maxsize=16)
def _load(source: str, content: bytes) -> Config:
    return parse(_yaml(content, source), source)
