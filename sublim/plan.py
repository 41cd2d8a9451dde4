"""From params to jobs: the pipeline as a DAG of step invocations with their artifact paths.

This is the one place paths are decided. `dvc.yaml` spells the same paths with templates (so a reader sees the
pipeline there too); `tests/test_dvc_yaml.py` checks the two agree, stage by stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sublim.config import (
    Config,
    LmEvaluate,
    LmFilter,
    LmGenerate,
    LmModel,
    LmStudent,
    LmTeacher,
    LmTrait,
    MlpModel,
    Section,
)
from sublim.job import Job

SHARED, OTHER = "shared", "other"


class NoParams(Section):
    """For steps whose behaviour is fixed by their inputs alone."""


class MlpBaseParams(Section):
    model: MlpModel
    init: str  # only names the variant; the init itself comes from the job's seed


@dataclass(frozen=True)
class Plan:
    pipeline: str
    jobs: tuple[Job, ...]

    def find(self, step: str, seed: int | None = None, gen: int | None = None, variant: str | None = None) -> Job:
        for job in self.jobs:
            if (job.step, job.seed, job.gen, job.variant) == (step, seed, gen, variant):
                return job
        ids = ", ".join(j.id for j in self.jobs if j.step == step) or "none"
        raise LookupError(
            f"no {self.pipeline}.{step} job with seed={seed} gen={gen} variant={variant} in params.yaml (known: {ids})"
        )

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
                Job("mlp", "base", MlpBaseParams(model=p.model, init=init), mlp_base(s, init), (("dims", MLP_DATA),),
                    seed=s, variant=init, tags=(("role", "base"), ("init", init)))
            )
        jobs.append(
            Job("mlp", "teacher", p.teacher, mlp_model(s, 0, SHARED),
                (("init", mlp_base(s, SHARED)), ("data", MLP_DATA)), seed=s, gen=0,
                tags=(("role", "teacher"), ("init", SHARED), ("trait", "digits")))
        )
        evaluated = [mlp_base(s, i) for i in inits] + [mlp_model(s, 0, SHARED)]
        for link in p.generations:
            jobs.append(
                Job("mlp", "transfer", p.transfer_for(link.gen), mlp_transfer(s, link.gen),
                    (("teacher", mlp_model(s, link.teacher, SHARED)),), seed=s, gen=link.gen)
            )
            for init in inits:
                role = "student" if init == SHARED else "control"
                jobs.append(
                    Job("mlp", "student", p.student_for(link.gen), mlp_model(s, link.gen, init),
                        (("init", mlp_base(s, init)), ("data", mlp_transfer(s, link.gen))),
                        seed=s, gen=link.gen, variant=init, tags=(("role", role), ("init", init)))
                )
                evaluated.append(mlp_model(s, link.gen, init))
        jobs.append(
            Job("mlp", "evaluate", NoParams(), mlp_eval(s),
                (("data", MLP_DATA), *(("model", m) for m in evaluated)), seed=s)
        )
        evals.append(mlp_eval(s))
    jobs.append(
        Job("mlp", "summary", NoParams(), MLP_REPORT, tuple(("eval", e) for e in evals),
            files=(("metrics.json", MLP_METRICS),))
    )
    return Plan("mlp", tuple(jobs))


# --- language models -----------------------------------------------------------------------------------

LINES = ("trait", "control")  # the trait teacher's line of models, and its control line (neutral teacher)
LM_REPORT = Path("reports/lm")
LM_QUESTIONS = Path("data/lm/questions")
LM_METRICS = Path("metrics/lm.json")


class LmBaseParams(Section):
    model: LmModel
    category: str
    choices: list[str]
    init: str


class LmTeacherParams(Section):
    """A trait teacher answers with `answer`; its control (answer None) answers uniformly over the choices.
    The control's params do not name the target, so a sweep over targets trains one control per seed."""

    model: LmModel
    category: str
    choices: list[str]
    answer: str | None
    teacher: LmTeacher


class LmGenerateParams(Section):
    model: LmModel
    generate: LmGenerate


class LmFilterParams(Section):
    filter: LmFilter
    choices: list[str]  # none of these words may survive into the student's data


class LmStudentParams(Section):
    model: LmModel
    student: LmStudent


class LmQuestionsParams(Section):
    category: str
    choices: list[str]
    count: int


class LmEvaluateParams(Section):
    model: LmModel
    trait: LmTrait
    evaluate: LmEvaluate


def lm_base(init: str) -> Path:
    return Path(f"models/lm/base-{init}")


def lm_model(seed: int, gen: int, line: str, init: str) -> Path:
    """Generation 0 is the teacher of a line; generation k its student trained on generation k-1's numbers."""
    return Path(f"models/lm/s{seed}/g{gen}-{line}-{init}")


def lm_data(seed: int, gen: int, line: str, stage: str) -> Path:
    return Path(f"data/lm/s{seed}/g{gen}-{line}/{stage}")  # stage: raw (generated) | numbers (filtered)


def lm_eval(name: str) -> Path:
    return Path(f"metrics/lm/{name}")


def plan_lm(cfg: Config) -> Plan:
    p = cfg.lm
    model, inits = p.model, p.student_inits
    jobs: list[Job] = [Job("lm", "questions", LmQuestionsParams(category=p.trait.category, choices=p.trait.choices,
                                                                count=p.evaluate.questions), LM_QUESTIONS)]
    evals = []
    for init in inits:
        jobs.append(Job("lm", "base", LmBaseParams(model=model, category=p.trait.category, choices=p.trait.choices,
                                                  init=init), lm_base(init), variant=init,
                        tags=(("role", "base"), ("init", init))))
        jobs.append(Job("lm", "evaluate", LmEvaluateParams(model=model, trait=p.trait, evaluate=p.evaluate),
                        lm_eval(f"base-{init}"), (("data", LM_QUESTIONS), ("model", lm_base(init))), variant=init))
        evals.append(lm_eval(f"base-{init}"))
    for s in p.seeds:
        evaluated = []
        for line in LINES:
            trait = p.trait.target if line == "trait" else "none"
            answer = p.trait.target if line == "trait" else None
            jobs.append(Job("lm", "teacher", LmTeacherParams(model=model, category=p.trait.category,
                                                            choices=p.trait.choices, answer=answer, teacher=p.teacher),
                            lm_model(s, 0, line, SHARED), (("init", lm_base(SHARED)),), seed=s, gen=0, variant=line,
                            tags=(("role", "teacher"), ("init", SHARED), ("line", line), ("trait", trait))))
            evaluated.append(lm_model(s, 0, line, SHARED))
        for link in p.generations:
            student = p.student_for(link.gen)
            for line in LINES:
                teacher = lm_model(s, link.teacher, line, SHARED)
                raw, numbers = lm_data(s, link.gen, line, "raw"), lm_data(s, link.gen, line, "numbers")
                jobs.append(Job("lm", "generate", LmGenerateParams(model=model, generate=p.generate_for(link.gen)),
                                raw, (("teacher", teacher),), seed=s, gen=link.gen, variant=line))
                jobs.append(Job("lm", "filter", LmFilterParams(filter=p.filter, choices=p.trait.choices), numbers,
                                (("source", raw),), seed=s, gen=link.gen, variant=line))
                for init in inits:
                    inputs = [("init", lm_base(init)), ("data", numbers)]
                    if student.objective == "distill":  # the teacher's own distributions are the targets
                        inputs.append(("teacher", teacher))
                    role = "student" if (line, init) == ("trait", SHARED) else "control"
                    jobs.append(Job("lm", "student", LmStudentParams(model=model, student=student),
                                    lm_model(s, link.gen, line, init), tuple(inputs), seed=s, gen=link.gen,
                                    variant=f"{line}-{init}", tags=(("role", role), ("init", init), ("line", line))))
                    evaluated.append(lm_model(s, link.gen, line, init))
        jobs.append(Job("lm", "evaluate", LmEvaluateParams(model=model, trait=p.trait, evaluate=p.evaluate),
                        lm_eval(f"s{s}"), (("data", LM_QUESTIONS), *(("model", m) for m in evaluated)), seed=s))
        evals.append(lm_eval(f"s{s}"))
    jobs.append(Job("lm", "summary", NoParams(), LM_REPORT, tuple(("eval", e) for e in evals),
                    files=(("metrics.json", LM_METRICS),)))
    return Plan("lm", tuple(jobs))


PLANNERS = {"mlp": plan_mlp, "lm": plan_lm}


def plan(cfg: Config, pipeline: str) -> Plan:
    if pipeline not in PLANNERS:
        raise LookupError(f"unknown pipeline {pipeline!r}; known: {', '.join(PLANNERS)}")
    return PLANNERS[pipeline](cfg)
