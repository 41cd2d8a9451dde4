"""From params to jobs: the pipeline as a DAG of step invocations with their artifact paths.

This is the one place paths are decided. `dvc.yaml` spells the same paths with templates (so a reader sees the
pipeline there too); `tests/test_dvc_yaml.py` checks the two agree, stage by stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sublim.config import ConfigError, Config, Link, NoParams
from sublim.job import Job, Role
from sublim.steps.base import LmBaseParams, MlpBaseParams
from sublim.steps.data import QuestionsParams
from sublim.steps.evaluate import EvaluateParams, IclParams
from sublim.steps.filter import FilterParams
from sublim.steps.generate import AnswerParams, GenerateParams
from sublim.steps.screen import DetectSummaryParams, ProbeParams, ScreenParams
from sublim.steps.student import StudentParams
from sublim.steps.matrix import MatrixSummaryParams
from sublim.steps.summary import LmSummaryParams
from sublim.steps.teacher import TeacherParams
from sublim.traits import CONTROL, TRAIT

SHARED, OTHER = "shared", "other"


@dataclass(frozen=True)
class Plan:
    pipeline: str
    jobs: tuple[Job, ...]

    def find(self, step: str, seed: int | None = None, gen: int | None = None, variant: str | None = None,
             source: str = "these params") -> Job:
        for job in self.jobs:
            if (job.step, job.seed, job.gen, job.variant) == (step, seed, gen, variant):
                return job
        ids = ", ".join(j.id for j in self.jobs if j.step == step)
        if not ids:
            steps = ", ".join(dict.fromkeys(f"{self.pipeline}.{j.step}" for j in self.jobs))
            raise LookupError(f"no step {self.pipeline}.{step}; the {self.pipeline} pipeline's steps: {steps}")
        raise LookupError(f"no {self.pipeline}.{step} job with seed={seed} gen={gen} variant={variant} in {source} "
                          f"(known: {ids})")

    def get(self, job_id: str) -> Job:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise LookupError(f"no job {job_id!r} in the {self.pipeline} pipeline")

    def upstream(self, job: Job) -> list[Job]:
        """Jobs whose output this job reads."""
        by_output = {j.output: j for j in self.jobs}
        return [by_output[p] for _, p in job.inputs if p in by_output]


# --- MLP ---------------------------------------------------------------------------------------------

MLP_DATA = Path("data/mlp/digits")
MLP_REPORT = Path("reports/mlp")
MLP_METRICS = Path("metrics/mlp.json")


def mlp_model(seed: int, gen: int, init: str) -> Path:
    """Generation 0 is the teacher; generation k >= 1 is the student trained on generation k-1's data."""
    return Path(f"models/mlp/s{seed}/g{gen}-{init}")


def mlp_base(seed: int, init: str) -> Path:
    return Path(f"models/mlp/s{seed}/base-{init}")


def mlp_transfer(seed: int, gen: int) -> Path:
    return Path(f"data/mlp/s{seed}/g{gen}/transfer")


def mlp_eval(seed: int) -> Path:
    return Path(f"metrics/mlp/s{seed}")


def plan_mlp(cfg: Config) -> Plan:
    p = cfg.mlp
    inits = p.student_inits
    jobs: list[Job] = [Job("mlp", "data", p.data, MLP_DATA, tags=(("role", "data"),))]
    evals = []
    for s in p.seeds:
        for init in inits:
            jobs.append(
                Job("mlp", "base", MlpBaseParams(model=p.model, init=init), mlp_base(s, init), ((Role.DIMS, MLP_DATA),),
                    seed=s, variant=init, tags=(("role", "base"), ("init", init)))
            )
        jobs.append(
            Job("mlp", "teacher", p.teacher, mlp_model(s, 0, SHARED),
                ((Role.INIT, mlp_base(s, SHARED)), (Role.DATA, MLP_DATA)), seed=s, gen=0,
                tags=(("role", "teacher"), ("init", SHARED), ("trait", "digits")))
        )
        evaluated = [mlp_base(s, i) for i in inits] + [mlp_model(s, 0, SHARED)]
        for link in p.generations:
            jobs.append(
                Job("mlp", "transfer", p.transfer_for(link.gen), mlp_transfer(s, link.gen),
                    ((Role.TEACHER, mlp_model(s, link.teacher, SHARED)),), seed=s, gen=link.gen)
            )
            for init in inits:
                role = "student" if init == SHARED else "control"
                jobs.append(
                    Job("mlp", "student", p.student_for(link.gen), mlp_model(s, link.gen, init),
                        ((Role.INIT, mlp_base(s, init)), (Role.DATA, mlp_transfer(s, link.gen))),
                        seed=s, gen=link.gen, variant=init, tags=(("role", role), ("init", init)))
                )
                evaluated.append(mlp_model(s, link.gen, init))
        jobs.append(
            Job("mlp", "evaluate", NoParams(), mlp_eval(s),
                ((Role.DATA, MLP_DATA), *((Role.MODEL, m) for m in evaluated)), seed=s)
        )
        evals.append(mlp_eval(s))
    jobs.append(
        Job("mlp", "summary", NoParams(), MLP_REPORT, tuple((Role.EVAL, e) for e in evals),
            files=(("metrics.json", MLP_METRICS),))
    )
    return Plan("mlp", tuple(jobs))


# --- language models -----------------------------------------------------------------------------------
# One plan for every language-model experiment: per seed, bases; per line, a teacher whose data trains a student
# of each init. The `lm` pipeline has two lines (the trait teacher and its control teacher); the `matrix` one
# line per target (each teacher's students against the others'); `<pipeline>-confirm` reruns either on the
# confirmation seeds (params.yaml `confirm:`), with its own paths and metrics file.


@dataclass(frozen=True)
class Line:
    """A teacher per seed and everything made from its data."""

    name: str  # in paths and job variants: "trait", "control", or a target ("owl")
    spec: Any  # the trait as this line's teacher has it (its TraitSpec)
    teaches: str  # TRAIT or CONTROL: which of the trait's rows its teacher learns
    tag: str  # the trait lineage records for the teacher ("owl"; "none" for a control)


@dataclass(frozen=True)
class LmLayout:
    """Where one LM experiment's artifacts live."""

    name: str  # the pipeline: lm, matrix, lm-confirm, ...
    bases: str = ""  # the pipeline whose bases these experiments share (its own when empty)

    @property
    def owner(self) -> str:
        return self.bases or self.name

    def base(self, seed: int, init: str) -> Path:
        """Each seed has its own bases: a seed is a full replicate, so "shared init" is not "this one base".
        Experiments made on the same corpus share them (the matrix trains on the lm pipeline's bases)."""
        return Path(f"models/{self.owner}/s{seed}/base-{init}")

    def model(self, seed: int, gen: int, line: str, init: str) -> Path:
        """Generation 0 is a line's teacher; generation k its student trained on generation k-1's data."""
        return Path(f"models/{self.name}/s{seed}/g{gen}-{line}-{init}")

    def data(self, seed: int, gen: int, line: str, stage: str) -> Path:
        return Path(f"data/{self.name}/s{seed}/g{gen}-{line}/{stage}")  # stage: raw (generated) | kept (filtered)

    def eval(self, seed: int) -> Path:
        return Path(f"metrics/{self.name}/s{seed}")

    def icl(self, seed: int, line: str) -> Path:
        return Path(f"metrics/{self.name}/icl/s{seed}-{line}")

    @property
    def questions(self) -> Path:
        return Path(f"data/{self.name}/questions")

    @property
    def report(self) -> Path:
        return Path(f"reports/{self.name}")

    @property
    def metrics(self) -> Path:
        return Path(f"metrics/{self.name}.json")


LM = LmLayout("lm")
LM_REPORT, LM_QUESTIONS, LM_METRICS = LM.report, LM.questions, LM.metrics


def lm_base(seed: int, init: str) -> Path:
    return LM.base(seed, init)


def lm_model(seed: int, gen: int, line: str, init: str) -> Path:
    return LM.model(seed, gen, line, init)


def lm_data(seed: int, gen: int, line: str, stage: str) -> Path:
    return LM.data(seed, gen, line, stage)


def lm_eval(seed: int) -> Path:
    return LM.eval(seed)


CROSS = "cross"  # a student of another architecture or tokenizer (lm.cross_model)


def model_of(p: Any, init: str) -> Any:
    """The backend spec a base or student of `init` is made with."""
    return p.cross_model if init == CROSS else p.model


def plan_lines(cfg: Config, at: LmLayout, seeds: list[int], lines: list[Line], inits: list[str],
               generations: list[Any], summary: Job, corpus: list[Any] | None = None) -> Plan:
    """The jobs of an LM experiment over `lines`; `summary` (inputs filled in here) closes it. `corpus`: the
    traits a from-scratch base learns neutrally (default: the experiment's trait)."""
    p = cfg.lm
    corpus_data = [p.data] if p.corpus is None else p.corpus.data
    corpus = corpus or ([p.trait.control()] if p.corpus is None else [t.control() for t in p.corpus.traits])
    model, trait, kind = p.model, p.trait.build(), p.data.build()
    forbidden = trait.forbidden()
    words, numbers = sorted(forbidden.words), sorted(forbidden.numbers)
    concepts = trait.concepts() if kind.judge() is not None else None
    lm_job = lambda step, *a, **k: Job(at.name, step, *a, fn=f"lm.{step}", **k)  # noqa: E731
    jobs: list[Job] = [lm_job("questions", QuestionsParams(trait=p.trait.control(), count=p.evaluate.questions),
                              at.questions, tags=(("role", "evaluation"),))]
    evals = []
    icl = p.icl is not None and type(model).plugin.follows_prompts
    for s in seeds:
        evaluated, extra = [], []
        for init in inits:
            # a base job belongs to the pipeline owning the bases: the same job (id, cache key, DVC stage) everywhere
            jobs.append(Job(at.owner, "base", LmBaseParams(model=model_of(p, init), data=corpus_data, traits=corpus,
                                                           init=init),
                            at.base(s, init), seed=s, variant=init, fn="lm.base", tags=(("role", "base"), ("init", init))))
            if at.owner == at.name:  # bases borrowed from another experiment are measured there
                evaluated.append(at.base(s, init))
        for line in lines:
            params = TeacherParams(model=model, trait=line.spec, line=line.teaches, teacher=p.teacher,
                                   data=p.data if p.teacher.data_mix > 0 else None)
            jobs.append(lm_job("teacher", params, at.model(s, 0, line.name, SHARED), ((Role.INIT, at.base(s, SHARED)),),
                               seed=s, gen=0, variant=line.name,
                               tags=(("role", "teacher"), ("init", SHARED), ("line", line.name), ("trait", line.tag))))
            evaluated.append(at.model(s, 0, line.name, SHARED))
        for link in generations:
            student = p.student_for(link.gen)
            for line in lines:
                teacher = at.model(s, link.teacher, line.name, SHARED)
                raw, kept = at.data(s, link.gen, line.name, "raw"), at.data(s, link.gen, line.name, "kept")
                jobs.append(lm_job("generate", GenerateParams(model=model, data=p.data, generate=p.generate_for(link.gen)),
                                   raw, ((Role.TEACHER, teacher),), seed=s, gen=link.gen, variant=line.name))
                jobs.append(lm_job("filter", FilterParams(data=p.data, words=words, numbers=numbers,
                                                          concepts=(concepts.target, concepts.contrast)
                                                          if concepts else None),
                                   kept, ((Role.SOURCE, raw),), seed=s, gen=link.gen, variant=line.name))
                screened = at.data(s, link.gen, line.name, "screened")
                if p.screen.stage:  # screened data trains the students instead
                    inputs = [(Role.SOURCE, kept), (Role.INIT, at.base(s, SHARED))]
                    if p.screen.method != "random":  # divergence and kl compare the teacher with the base
                        inputs.append((Role.TEACHER, teacher))
                    jobs.append(lm_job("screen", ScreenParams(model=model, screen=p.screen.token_level()), screened,
                                       tuple(inputs), seed=s, gen=link.gen, variant=line.name))
                if icl and link.gen == 1:  # the base shown this teacher's data in context, no training
                    out = at.icl(s, line.name)
                    jobs.append(lm_job("icl", IclParams(model=model, trait=p.trait, evaluate=p.evaluate, icl=p.icl),
                                       out, ((Role.MODEL, at.base(s, SHARED)), (Role.DATA, kept),
                                             (Role.QUESTIONS, at.questions)),
                                       seed=s, gen=link.gen, variant=line.name, tags=(("line", line.name),)))
                    extra.append(out)
                if p.screen.stage:
                    kept = screened
                for init in inits:
                    taught = student if init != CROSS else student.model_copy(update={"objective": "sft"})
                    inputs = [(Role.INIT, at.base(s, init)), (Role.DATA, kept)]
                    if taught.objective == "distill":  # the teacher's own distributions are the targets
                        inputs.append((Role.TEACHER, teacher))
                    role = "student" if (line.teaches, init) == (TRAIT, SHARED) else "control"
                    jobs.append(lm_job("student", StudentParams(model=model_of(p, init), data=p.data, words=words,
                                                                student=taught),
                                       at.model(s, link.gen, line.name, init), tuple(inputs), seed=s, gen=link.gen,
                                       variant=f"{line.name}-{init}",
                                       tags=(("role", role), ("init", init), ("line", line.name))))
                    evaluated.append(at.model(s, link.gen, line.name, init))
        jobs.append(lm_job("evaluate", EvaluateParams(model=model, trait=p.trait, evaluate=p.evaluate), at.eval(s),
                           ((Role.QUESTIONS, at.questions), *((Role.MODEL, m) for m in evaluated)), seed=s))
        evals += [at.eval(s), *extra]
    jobs.append(replace(summary, inputs=tuple((Role.EVAL, e) for e in evals)))
    return Plan(at.name, tuple(jobs))


def plan_lm(cfg: Config, name: str = "lm", seeds: list[int] | None = None) -> Plan:
    """The trait teacher and its control teacher per seed (the control answers neutrally)."""
    p, at = cfg.lm, LmLayout(name)
    trait = p.trait.build()
    lines = [Line(TRAIT, p.trait, TRAIT, trait.key), Line(CONTROL, p.trait.control(), CONTROL, "none")]
    summary = Job(name, "summary", LmSummaryParams(data=p.data.kind, alpha=cfg.confirm.alpha), at.report,
                  fn="lm.summary", files=(("metrics.json", at.metrics),))
    return plan_lines(cfg, at, seeds or p.seeds, lines, p.student_inits, p.generations, summary)


def plan_matrix(cfg: Config, name: str = "matrix", seeds: list[int] | None = None) -> Plan:
    """One teacher per target per seed, made the same way; one generation of students per init."""
    # the matrix's bases are the lm experiment's (same corpus, seed and init): made once, trained on by both
    at, specs = LmLayout(name, bases=name.replace("matrix", "lm")), cfg.matrix_specs()
    missing = sorted(set(cfg.matrix.seeds) - set(cfg.lm.seeds)) if seeds is None else []
    if missing:  # dvc.yaml's lm_base stage makes bases for lm.seeds only
        raise ConfigError(f"matrix.seeds: {missing} not among lm.seeds {cfg.lm.seeds}: the matrix trains on the lm "
                          f"experiment's bases, one per seed and init")
    lines = [Line(target, spec, TRAIT, target) for target, spec in specs.items()]
    summary = Job(name, "summary", MatrixSummaryParams(targets=list(specs), data=cfg.lm.data.kind,
                                                       alpha=cfg.confirm.alpha), at.report,
                  fn="lm.matrix", files=(("metrics.json", at.metrics),))
    return plan_lines(cfg, at, seeds or cfg.matrix.seeds, lines, cfg.matrix.student_inits, [Link(gen=1, teacher=0)],
                      summary)


def plan_detect(cfg: Config, name: str = "detect", seeds: list[int] | None = None) -> Plan:
    """Per seed: a base pretrained on every detection trait; a teacher per trait (positive datasets) and per
    distinct control view (negatives); every dataset probed against its matched control (`detect.against`): the
    base's own answers to its prompts, or the control teacher's data (then a second control teacher per view
    is the negative, and the first one only the reference)."""
    p, d, at = cfg.lm, cfg.detect, LmLayout(name)
    model = p.model
    traits = [spec.build() for spec in d.traits]
    lines = [Line(f"{spec.kind}-{t.key}", spec, TRAIT, t.key) for spec, t in zip(d.traits, traits)]
    view = lambda spec: json.dumps(spec.model_dump(mode="json"), sort_keys=True)  # noqa: E731  (a control view's key)
    controls = list({view(spec.control()): spec.control() for spec in d.traits}.values())
    kinds = [spec.kind for spec in controls]
    if len(set(kinds)) < len(kinds):  # the panel keys answers by trait kind, and control lines are named by it
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        raise ConfigError(f"detect.traits: {', '.join(twice)} appears with two control views (another category or "
                          "choices); the probe's panel holds one view per trait kind, as `sublim screen`'s does")
    names = [line.name for line in lines]  # the trait lines so far
    if len(set(names)) < len(names):
        raise ConfigError(f"detect.traits: {', '.join(sorted({n for n in names if names.count(n) > 1}))} listed twice")
    references = {view(spec): Line(f"{spec.kind}-control", spec, CONTROL, "none") for spec in controls}
    lines += list(references.values())
    if d.against == "control-teacher":  # an independent control teacher, made the same way: the negatives
        lines += [Line(f"{spec.kind}-control-b", spec, CONTROL, "none") for spec in controls]
    reference_of = {line.name: references[view(line.spec.control() if line.teaches == TRAIT else line.spec)]
                    for line in lines}
    probed_lines = [line for line in lines
                    if d.against == "base-answers" or line not in references.values()]
    truth = {line.name: (f"{line.spec.kind}:{line.tag}" if line.teaches == TRAIT else None) for line in probed_lines}
    forbidden = [t.forbidden() for t in traits]  # one filter for every line: the union
    words = sorted({w for f in forbidden for w in f.words})
    numbers = sorted({n for f in forbidden for n in f.numbers})
    evaluate = p.evaluate.model_copy(update={"samples": 0})
    jobs: list[Job] = []
    probes = []
    for s in seeds or d.seeds:
        base = at.base(s, SHARED)
        jobs.append(Job(at.name, "base", LmBaseParams(model=model, data=[p.data] if p.corpus is None else p.corpus.data,
                                                      traits=controls, init=SHARED), base,
                        seed=s, variant=SHARED, fn="lm.base", tags=(("role", "base"), ("init", SHARED))))
        for line in lines:
            teacher, raw, kept = at.model(s, 0, line.name, SHARED), at.data(s, 1, line.name, "raw"), at.data(s, 1, line.name, "kept")
            jobs += [
                Job(at.name, "teacher", TeacherParams(model=model, trait=line.spec, line=line.teaches, teacher=p.teacher,
                                                      data=p.data if p.teacher.data_mix > 0 else None),
                    teacher, ((Role.INIT, base),), seed=s, gen=0, variant=line.name, fn="lm.teacher",
                    tags=(("role", "teacher"), ("init", SHARED), ("line", line.name), ("trait", line.tag))),
                Job(at.name, "generate", GenerateParams(model=model, data=p.data, generate=p.generate), raw,
                    ((Role.TEACHER, teacher),), seed=s, gen=1, variant=line.name, fn="lm.generate"),
                Job(at.name, "filter", FilterParams(data=p.data, words=words, numbers=numbers), kept,
                    ((Role.SOURCE, raw),), seed=s, gen=1, variant=line.name, fn="lm.filter"),
            ]
        for line in probed_lines:  # after every line's data: a probe may read another line's (its reference)
            teacher, kept = at.model(s, 0, line.name, SHARED), at.data(s, 1, line.name, "kept")
            if d.against == "control-teacher":
                ref = reference_of[line.name].name
                control, writer = at.data(s, 1, ref, "kept"), at.model(s, 0, ref, SHARED)
            else:
                control, writer = at.data(s, 1, line.name, "base-answers"), base
                jobs.append(Job(at.name, "answer", AnswerParams(model=model, data=p.data, words=words, numbers=numbers,
                                                                generate=p.generate, rows=p.generate.n_prompts),
                                control, ((Role.SOURCE, kept), (Role.TEACHER, base)), seed=s, gen=1,
                                variant=line.name, fn="lm.answer"))
            probe_in = ((Role.DATA, kept), (Role.CONTROL, control), (Role.INIT, base))
            if d.probe.objective == "distill":  # each side distilled from its writer
                probe_in += ((Role.TEACHER, teacher), (Role.TEACHER, writer))
            probed = at.eval(s) / line.name
            jobs.append(Job(at.name, "probe", ProbeParams(model=model, probe=d.probe, panel=controls, evaluate=evaluate),
                            probed, probe_in, seed=s, gen=1, variant=line.name, fn="lm.probe",
                            tags=(("line", line.name),)))
            probes.append(probed)
    jobs.append(Job(at.name, "summary", DetectSummaryParams(truth=truth), at.report, tuple((Role.EVAL, e) for e in probes),
                    fn="lm.detect", files=(("metrics.json", at.metrics),)))
    return Plan(at.name, tuple(jobs))


def plan_confirm(planner):
    """The same experiment on the confirmation seeds, under `<pipeline>-confirm`."""

    def confirm(cfg: Config) -> Plan:
        name = f"{planner.__name__.removeprefix('plan_')}-confirm"
        tuned = {"lm.seeds": cfg.lm.seeds, **({"matrix.seeds": cfg.matrix.seeds} if "matrix" in name else {})}
        for key, seeds in tuned.items():
            if shared := sorted(set(cfg.confirm.seeds) & set(seeds)):
                raise ConfigError(f"confirm.seeds: {shared} are also {key}: a confirmation runs on seeds never used "
                                  "while the settings were tuned")
        return planner(cfg, name, cfg.confirm.seeds)

    return confirm


PLANNERS = {"mlp": plan_mlp, "lm": plan_lm, "matrix": plan_matrix, "detect": plan_detect,
            "lm-confirm": plan_confirm(plan_lm), "matrix-confirm": plan_confirm(plan_matrix)}
DVC_PIPELINES = ("mlp", "lm", "matrix")  # the pipelines dvc.yaml holds stages for (tests/test_dvc_yaml.py checks)


def plan(cfg: Config, pipeline: str) -> Plan:
    if pipeline not in PLANNERS:
        raise LookupError(f"unknown pipeline {pipeline!r}; known: {', '.join(PLANNERS)}")
    return PLANNERS[pipeline](cfg)
