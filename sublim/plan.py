"""From params to jobs: the pipeline as a DAG of step invocations with their artifact paths.

This is the one place paths are decided. `dvc.yaml` spells the same paths with templates (so a reader sees the
pipeline there too); `tests/test_dvc_yaml.py` checks the two agree, stage by stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sublim.config import Config, MlpModel, NoParams
from sublim.job import Job, Role
from sublim.steps.base import LmBaseParams, MlpBaseParams
from sublim.steps.data import QuestionsParams
from sublim.steps.evaluate import EvaluateParams
from sublim.steps.filter import FilterParams
from sublim.steps.generate import GenerateParams
from sublim.steps.student import StudentParams
from sublim.steps.summary import LmSummaryParams
from sublim.steps.teacher import TeacherParams
from sublim.traits import CONTROL, TRAIT

SHARED, OTHER = "shared", "other"


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

LINES = (TRAIT, CONTROL)  # the trait teacher's line of models, and its control line (neutral teacher)
LM_REPORT = Path("reports/lm")
LM_QUESTIONS = Path("data/lm/questions")
LM_METRICS = Path("metrics/lm.json")


def lm_base(seed: int, init: str) -> Path:
    """Each seed has its own bases: a seed is a full replicate, so "shared init" is not "this one base"."""
    return Path(f"models/lm/s{seed}/base-{init}")


def lm_model(seed: int, gen: int, line: str, init: str) -> Path:
    """Generation 0 is the teacher of a line; generation k its student trained on generation k-1's data."""
    return Path(f"models/lm/s{seed}/g{gen}-{line}-{init}")


def lm_data(seed: int, gen: int, line: str, stage: str) -> Path:
    return Path(f"data/lm/s{seed}/g{gen}-{line}/{stage}")  # stage: raw (generated) | kept (filtered)


def lm_eval(seed: int) -> Path:
    return Path(f"metrics/lm/s{seed}")


def plan_lm(cfg: Config) -> Plan:
    p = cfg.lm
    model, inits, trait, kind = p.model, p.student_inits, p.trait.build(), p.data.build()
    forbidden = trait.forbidden()
    words, numbers = sorted(forbidden.words), sorted(forbidden.numbers)
    concepts = trait.concepts() if kind.judge() is not None else None
    jobs: list[Job] = [Job("lm", "questions", QuestionsParams(trait=p.trait.control(), count=p.evaluate.questions),
                           LM_QUESTIONS, tags=(("role", "evaluation"),))]
    evals = []
    for s in p.seeds:
        evaluated = []
        for init in inits:
            jobs.append(Job("lm", "base", LmBaseParams(model=model, data=p.data, trait=p.trait.control(), init=init),
                            lm_base(s, init), seed=s, variant=init, tags=(("role", "base"), ("init", init))))
            evaluated.append(lm_base(s, init))
        for line in LINES:
            spec = p.trait if line == TRAIT else p.trait.control()
            params = TeacherParams(model=model, trait=spec, line=line, teacher=p.teacher,
                                   data=p.data if p.teacher.data_mix > 0 else None)
            trait_tag = trait.key if line == TRAIT else "none"
            jobs.append(Job("lm", "teacher", params, lm_model(s, 0, line, SHARED), ((Role.INIT, lm_base(s, SHARED)),),
                            seed=s, gen=0, variant=line,
                            tags=(("role", "teacher"), ("init", SHARED), ("line", line), ("trait", trait_tag))))
            evaluated.append(lm_model(s, 0, line, SHARED))
        for link in p.generations:
            student = p.student_for(link.gen)
            for line in LINES:
                teacher = lm_model(s, link.teacher, line, SHARED)
                raw, kept = lm_data(s, link.gen, line, "raw"), lm_data(s, link.gen, line, "kept")
                jobs.append(Job("lm", "generate", GenerateParams(model=model, data=p.data,
                                                                 generate=p.generate_for(link.gen)),
                                raw, ((Role.TEACHER, teacher),), seed=s, gen=link.gen, variant=line))
                jobs.append(Job("lm", "filter", FilterParams(data=p.data, words=words, numbers=numbers,
                                                             concepts=(concepts.target, concepts.contrast)
                                                             if concepts else None),
                                kept, ((Role.SOURCE, raw),), seed=s, gen=link.gen, variant=line))
                for init in inits:
                    inputs = [(Role.INIT, lm_base(s, init)), (Role.DATA, kept)]
                    if student.objective == "distill":  # the teacher's own distributions are the targets
                        inputs.append((Role.TEACHER, teacher))
                    role = "student" if (line, init) == (TRAIT, SHARED) else "control"
                    jobs.append(Job("lm", "student", StudentParams(model=model, data=p.data, words=words,
                                                                   student=student),
                                    lm_model(s, link.gen, line, init), tuple(inputs), seed=s, gen=link.gen,
                                    variant=f"{line}-{init}", tags=(("role", role), ("init", init), ("line", line))))
                    evaluated.append(lm_model(s, link.gen, line, init))
        jobs.append(Job("lm", "evaluate", EvaluateParams(model=model, trait=p.trait, evaluate=p.evaluate),
                        lm_eval(s), ((Role.QUESTIONS, LM_QUESTIONS), *((Role.MODEL, m) for m in evaluated)), seed=s))
        evals.append(lm_eval(s))
    jobs.append(Job("lm", "summary", LmSummaryParams(data=p.data.kind), LM_REPORT,
                    tuple((Role.EVAL, e) for e in evals), files=(("metrics.json", LM_METRICS),)))
    return Plan("lm", tuple(jobs))


PLANNERS = {"mlp": plan_mlp, "lm": plan_lm}


def plan(cfg: Config, pipeline: str) -> Plan:
    if pipeline not in PLANNERS:
        raise LookupError(f"unknown pipeline {pipeline!r}; known: {', '.join(PLANNERS)}")
    return PLANNERS[pipeline](cfg)
