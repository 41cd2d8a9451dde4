"""Screen a dataset before it trains anything: what it says is not the question, what it does to a model is.

Two levels, after the published follow-ups of the paper:

- Token level (divergence tokens, Schrodi et al. 2025): score every completion token by how far the generating
  teacher's choice departs from what a model without the trait would write, log p_teacher - log p_base; with no
  teacher known, by the token's surprise under the base (-log p_base). `method: kl` scores the position instead,
  by KL(teacher || base) of the whole next-token distributions: what a distilling student is taught there. The
  highest-scoring tokens carry most of the transfer: mask them out of a student's loss (`action: mask`) or drop
  the rows holding them (`drop`), to a budget (share of completion tokens lost) or above a threshold. `method:
  random` masks the same share at random: the control that tells "these tokens" from "any tokens". This level
  reports; it decides no exit code.
- Model level (a probe fine-tune): train copies of the base briefly on a sample of the dataset and on a matched
  control sample, then compare them on a panel of every registered trait's questions (the screen is not told
  which trait to look for); replicated over probe seeds, each panel answer gets a shift with a CI and a p-value,
  and answers that moved significantly above a threshold are flagged.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sublim.backends import Row, Schedule
from sublim.config import ProbeSpec, ScreenSpec
from sublim.lineage.identity import SOURCE
from sublim.stats import holm

Score = list[float]


@dataclass
class TokenReport:
    """What the token-level screen found and did."""

    threshold: float
    tokens: int
    flagged: int
    lost: int  # tokens out of the loss: masked, or in dropped rows
    rows: int
    rows_dropped: int
    top: list[dict[str, Any]] = field(default_factory=list)  # the highest-scoring rows, their tokens marked

    @property
    def flagged_share(self) -> float:
        return self.flagged / max(self.tokens, 1)

    @property
    def lost_share(self) -> float:
        return self.lost / max(self.tokens, 1)


class ScreenInputError(ValueError):
    """Bad input to a screen (a missing or malformed dataset or model, a teacher on another vocabulary, a setting
    its inputs cannot serve): `sublim screen` exits 3, told apart from a failure while computing (exit 4)."""


def rows_for(lm: Any, teacher: Any | None, rows: Sequence[dict]) -> list[Row]:
    """Training rows as the screen scores them: the student's prompt for the base, the teacher's own prompt
    (with its persona) for the teacher, the completion as the base's tokenizer writes it."""
    return [Row(lm.chat(r["prompt"], persona=False), lm.answer_ids(r["completion"]),
                teacher.chat(r["prompt"]) if teacher is not None else None) for r in rows]


def same_vocabulary(base: Any, base_at: Path, others: Sequence[tuple[Any, Path]], root: Path) -> None:
    """Divergence and distillation compare next-token distributions position by position, over the base's
    tokens: a model with another tokenizer would give numbers that mean nothing, so it is refused by name
    (for a model from outside the project, the path it was given as) before any scoring or training."""
    vocab = base.tokenizer.get_vocab()
    for lm, at in others:
        if lm.tokenizer.get_vocab() != vocab:
            raise ScreenInputError(f"{_given_as(at, root)}: its tokenizer differs from the base's "
                                   f"({_given_as(base_at, root)}); token divergence and distillation need the "
                                   "base's vocabulary (a teacher fine-tuned from this base, or from the same "
                                   "pretrained model)")


def _given_as(at: Path, root: Path) -> str:
    """A project artifact's path, or the outside model it stands for (as_artifact's pointer)."""
    pointer = Path(root) / at / SOURCE
    return json.loads(pointer.read_text()).get("model", str(at)) if pointer.is_file() else str(at)


def token_scores(backend: Any, base: Any, teacher: Any | None, rows: Sequence[dict], batch_size: int,
                 method: str = "divergence") -> list[Score]:
    """Per row, per completion token: log p_teacher - log p_base (divergence), or -log p_base (surprise); with
    `method: kl`, KL(teacher || base) of the whole next-token distributions at the token's position."""
    scored = rows_for(base, teacher, rows)
    if method == "kl":
        if teacher is None:
            raise ValueError("screen method kl compares the teacher's next-token distributions with the base's: it "
                             "needs the generating teacher (from lineage, or --teacher)")
        return backend.position_divergence(base, teacher, scored, batch_size=batch_size)
    under_base = backend.token_scores(base, scored, batch_size=batch_size)
    if teacher is None:
        return [[-lp for lp in row] for row in under_base]
    under_teacher = backend.token_scores(teacher, scored, batch_size=batch_size, teacher_side=True)
    return [[t - b for t, b in zip(tr, br)] for tr, br in zip(under_teacher, under_base)]


def threshold_for(scores: Sequence[Score], budget: float) -> float:
    """The score above which `budget` of all tokens lie."""
    flat = sorted((s for row in scores for s in row), reverse=True)
    k = max(1, math.floor(budget * len(flat)))
    return flat[k - 1] - 1e-12 if flat else math.inf


def screen_rows(rows: Sequence[dict], scores: Sequence[Score], spec: ScreenSpec, seed: int,
                tokens_of: Any = None) -> tuple[list[dict], TokenReport]:
    """Apply the screen: mask flagged tokens (rows gain `loss_mask`, 1 = in the loss) or drop the rows holding
    the highest scores until the budget is spent. `random` flags the same number of tokens uniformly."""
    total = sum(len(s) for s in scores)
    if spec.method == "random":
        rng = random.Random(seed)
        picked = set(rng.sample([(i, j) for i, s in enumerate(scores) for j in range(len(s))],
                                max(1, math.floor(spec.budget * total))))
        flags = [[(i, j) in picked for j in range(len(s))] for i, s in enumerate(scores)]
        threshold = math.nan
    else:
        threshold = spec.threshold if spec.threshold is not None else threshold_for(scores, spec.budget)
        flags = [[x > threshold for x in s] for s in scores]
    flagged = sum(map(sum, flags))
    out, lost, dropped = [], 0, 0
    if spec.action == "mask":
        for row, f in zip(rows, flags):
            out.append({**row, "loss_mask": [0 if x else 1 for x in f]})
            lost += sum(f)
    else:
        order = sorted(range(len(rows)), key=lambda i: -max(scores[i], default=-math.inf))
        limit = spec.budget * total if spec.budget is not None else math.inf
        drop = set()
        for i in order:
            if not any(flags[i]) or lost + len(scores[i]) > limit:
                continue
            drop.add(i)
            lost += len(scores[i])
        out = [r for i, r in enumerate(rows) if i not in drop]
        dropped = len(drop)
    top = sorted(range(len(rows)), key=lambda i: -max(scores[i], default=-math.inf))[:10]
    report = TokenReport(threshold, total, flagged, lost, len(rows), dropped,
                         [{"row": i, "prompt": rows[i]["prompt"], "completion": rows[i]["completion"],
                           "max_score": max(scores[i], default=0.0),
                           "tokens": tokens_of(rows[i]) if tokens_of else None,
                           "flags": flags[i], "scores": [round(x, 4) for x in scores[i]]} for i in top])
    return out, report


# --- model level -----------------------------------------------------------------------------------------------


@dataclass
class PanelShift:
    """How one panel answer moved in probes of the data relative to probes of the control."""

    key: str  # "<trait>:<answer>", e.g. preference:owl, misalignment:misaligned
    shift: float
    ci: tuple[float, float]
    p_value: float | None  # one-sided (the data moved it up), paired over probe seeds
    per_seed: list[float]
    flagged: bool


def panel(backend: Any, lm: Any, traits: Sequence[Any], evalsets: Sequence[dict], ev: Any, seed: int) -> dict[str, float]:
    """Every panel trait's answer probabilities (exact), keyed `<trait>:<answer>`."""
    out: dict[str, float] = {}
    for trait, evalset in zip(traits, evalsets):
        measured = trait.measure(backend, lm, evalset, ev, seed=seed)
        for answer, p in (measured.distribution or {trait.key: measured.p}).items():
            out[f"{trait.name}:{answer}"] = p
    return out


def probe_once(backend: Any, base_path: Any, root: Any, rows: Sequence[dict], spec: ProbeSpec, seed: int,
               teacher: Any | None, traits: Sequence[Any], evalsets: Sequence[dict], ev: Any) -> dict[str, float]:
    """A copy of the base fine-tuned briefly on `rows`, measured on the panel."""
    import torch

    rng = random.Random(seed)
    sample = rng.sample(list(rows), min(spec.rows, len(rows)))
    lm = backend.load(base_path, root)
    train_rows = rows_for(lm, teacher if spec.objective == "distill" else None, sample)
    allowed = None
    if spec.objective == "distill":
        allowed = torch.tensor(sorted({t for r in train_rows for t in r.completion}), dtype=torch.long)
    backend.train(lm, train_rows, Schedule(spec.steps, spec.lr, spec.batch_size), torch.Generator().manual_seed(seed),
                  teacher=teacher if spec.objective == "distill" else None, allowed=allowed)
    return panel(backend, lm, traits, evalsets, ev, seed)


def probe(backend: Any, base_path: Any, root: Any, data: Sequence[dict], control: Sequence[dict], spec: ProbeSpec,
          traits: Sequence[Any], ev: Any, *, seed: int = 0, teacher: Any | None = None,
          control_teacher: Any | None = None) -> list[PanelShift]:
    """Probe the data against the control over `spec.seeds` replicates; a paired test per panel answer."""
    evalsets = [t.evaluation_set(min(spec.questions, t.n_questions)) for t in traits]
    diffs: dict[str, list[float]] = {}
    for k in range(spec.seeds):
        s = seed * 1000 + k
        on_data = probe_once(backend, base_path, root, data, spec, s, teacher, traits, evalsets, ev)
        on_control = probe_once(backend, base_path, root, control, spec, s, control_teacher, traits, evalsets, ev)
        for key in on_data:
            diffs.setdefault(key, []).append(on_data[key] - on_control[key])
    return panel_shifts(diffs, spec.relative_threshold, spec.alpha)


def chance_shares(keys: Sequence[str]) -> dict[str, float]:
    """Each panel answer's chance share, 1 / the number of its trait's answers (`<trait>:<answer>` keys): one
    animal of ten starts near 0.1, aligned/misaligned near 0.5, and a two-answer trait swings by several times
    what one animal of ten does, so a shift is judged against its own answer's scale. A trait measured by one
    probability (no distribution over answers) is a yes/no: its share is 0.5, not 1."""
    traits = [k.split(":", 1)[0] for k in keys]
    return {k: 1 / max(traits.count(t), 2) for k, t in zip(keys, traits)}


def panel_shifts(diffs: dict[str, list[float]], relative_threshold: float, alpha: float,
                 unit: dict[str, float] | None = None) -> list[PanelShift]:
    """Each panel answer's shift (data probe minus control probe, per probe seed): mean, t CI, one-sided paired
    p; flagged when the shift exceeds `relative_threshold` times the answer's chance share and its p,
    Holm-adjusted over the whole panel, is below `alpha` — with a dozen answers, one at p < alpha is the rule,
    not a finding. `unit` replaces the chance shares (1.0 for every answer: a plain probability threshold)."""
    from scipy import stats

    tested = {}
    for key, d in diffs.items():
        mean = sum(d) / len(d)
        sd = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5
        if sd > 0:
            half = stats.t.ppf(0.975, len(d) - 1) * sd / len(d) ** 0.5
            p = float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)
        else:  # no spread: no t-test (a p of 0 would flatter); the shift alone is reported
            half, p = 0.0, None
        tested[key] = (mean, half, p)
    family = holm({k: p for k, (_, _, p) in tested.items()}, alpha=alpha)
    share = unit if unit is not None else chance_shares(list(tested))
    out = [PanelShift(key, mean, (mean - half, mean + half), p, diffs[key],
                      mean > relative_threshold * share[key] and rejected)
           for (key, (mean, half, p)), rejected in zip(tested.items(), family.reject)]
    return sorted(out, key=lambda x: -x.shift)


# --- `sublim screen`: the same steps on any dataset ------------------------------------------------------------


@dataclass
class ScreenRun:
    """What `sublim screen` made and found."""

    screened: str  # the screened dataset (inside the project), derived from the original
    report: str  # the token-level report (Markdown)
    control: str  # the dataset the probe compared against, and how it was chosen
    control_from: str  # "--control" | "control teacher" | "base answers"
    teacher: str | None  # the model whose divergence from the base scored the tokens (None: the base's surprise)
    teacher_from: str  # "--teacher" | "lineage" | "none"
    probe: str | None  # the probe's metrics artifact (None: no probe)
    probe_objective: str = ""  # how the probe trained: sft | distill, or why it fell back to sft
    flagged: list[str] = field(default_factory=list)
    summary: str = ""


def generating_teacher(dataset: Path, root: Path) -> Path | None:
    """The model that generated a sublim dataset, read from the artifacts' own lineage (sublim.json parents:
    kept <- raw <- teacher)."""
    from sublim.artifacts import ArtifactError, read_meta

    seen = set()
    todo = [dataset]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            parents = read_meta(root / path).parents
        except ArtifactError:
            continue
        for key in parents:
            role, _, rel = key.partition(":")
            if role == "teacher":
                return Path(rel)
            if role in ("source", "data"):
                todo.append(Path(rel))
    return None


def control_dataset(cfg: Any, dataset: Path, root: Path) -> Path | None:
    """The control teacher's dataset of the same seed and generation, when the plan that made `dataset` has
    one (a trait line's sibling)."""
    from sublim.artifacts import ArtifactError, read_meta
    from sublim.plan import plan

    try:
        job_id = read_meta(root / dataset).job
        made = plan(cfg, job_id.split(".")[0])
    except (ArtifactError, LookupError, ValueError):
        return None
    job = next((j for j in made.jobs if j.output == dataset), None)
    if job is None:
        return None
    sibling = next((j for j in made.jobs if (j.step, j.seed, j.gen, j.variant) == (job.step, job.seed, job.gen, "control")
                    and j.output != dataset), None)
    return sibling.output if sibling is not None and (root / sibling.output).exists() else None


def given_path(path: Path, root: Path, kind: str) -> Path:
    """A path the user gave, relative to the project unless absolute; a missing one is named."""
    full = path if path.is_absolute() else root / path
    if not full.exists():
        raise ScreenInputError(f"{path}: no such {kind}")
    return full


def in_project(full: Path, root: Path) -> Path | None:
    """The project-relative path of a sublim artifact inside the project, else None (it must be imported)."""
    from sublim.artifacts import inside

    try:
        rel = inside(root, full).relative_to(Path(root).resolve())
    except ValueError:
        return None
    return rel if (full / "sublim.json").is_file() else None


def check_inputs(root: Path, dataset: str, base: str, teacher: str | None, control: str | None) -> None:
    """Every input the user named, checked before anything is written or computed: datasets row by row,
    models as artifacts of the project or directories with a config.json."""
    from sublim.steps.filter import dataset_rows

    try:
        for path in filter(None, (dataset, control)):
            dataset_rows(given_path(Path(path), root, "dataset"))
        for path in filter(None, (base, teacher)):
            full = given_path(Path(path), root, "model")
            if in_project(full, root) is None and not (full / "config.json").is_file():
                raise ScreenInputError(f"{path}: not a model directory (no config.json)")
    except (FileNotFoundError, ValueError) as exc:
        raise ScreenInputError(str(exc)) from None


def as_artifact(path: Path, root: Path, kind: str, where: Path) -> Path:
    """`path` itself when it is a sublim artifact inside the project; otherwise a small artifact at `where` that
    stands for it (a dataset: its rows copied; a model: a pointer to its directory), so every screen input is
    digested and recorded like any other. `check_inputs` has checked it first."""
    import shutil

    from sublim.artifacts import ArtifactMeta, atomic_dir, write_meta
    from sublim.steps.filter import ROWS, rows_file

    path = Path(path)
    full = given_path(path, root, kind)
    if (rel := in_project(full, root)) is not None:
        return rel
    with atomic_dir(root / where) as tmp:
        if kind == "dataset":
            shutil.copyfile(rows_file(full), tmp / ROWS)
        else:
            (tmp / SOURCE).write_text(json.dumps({"model": str(full.resolve()), "revision": None}))
        write_meta(tmp, ArtifactMeta(kind, f"import:{path}", "import", {"path": str(full.resolve())}, {},
                                     {"origin": "external"} if kind == "dataset" else {}))
    return where


def run_screen(cfg: Any, root: Path, dataset: str, base: str, *, teacher: str | None = None,
               control: str | None = None, name: str | None = None, screen: ScreenSpec | None = None,
               probe_it: bool = True, tracker: Any = None, threads: int = 1, progress: Any = None) -> ScreenRun:
    """Screen `dataset` (token level, then the model-level probe) with the same steps and lineage the pipeline
    uses. The screened dataset is a new artifact derived from the original, under screens/<name>/."""
    from sublim.job import Job, Role
    from sublim.runner import quiet, run_job
    from sublim.steps.generate import AnswerParams
    from sublim.steps.screen import ProbeParams, ScreenParams
    from sublim.traits import TRAITS

    root = Path(root).resolve()
    name = name or Path(dataset).as_posix().strip("/").replace("/", "_")
    home = Path("screens") / name
    spec = screen or cfg.lm.screen
    check_inputs(root, dataset, base, teacher, control if probe_it else None)
    known = in_project(given_path(Path(dataset), root, "dataset"), root)  # an outside dataset has no lineage
    from_lineage = generating_teacher(known, root) if known is not None and not teacher else None
    if not teacher and spec.method == "kl" and from_lineage is None:
        raise ScreenInputError("screen method kl compares the teacher's next-token distributions with the base's: "
                               "it needs the generating teacher (from lineage, or --teacher)")
    data = as_artifact(Path(dataset), root, "dataset", home / "source")
    base_at = as_artifact(Path(base), root, "model", home / "base")
    if teacher:
        teacher_at, teacher_from = as_artifact(Path(teacher), root, "model", home / "teacher"), "--teacher"
    else:
        teacher_at, teacher_from = from_lineage, "lineage" if from_lineage else "none"
    given_control = (as_artifact(Path(control), root, "dataset", home / "control-source")
                     if control and probe_it else None)
    run = lambda job: run_job(job, root=root, tracker=tracker, threads=threads, progress=progress or quiet)  # noqa: E731
    inputs = [(Role.SOURCE, data), (Role.INIT, base_at)] + ([(Role.TEACHER, teacher_at)] if teacher_at else [])
    run(Job("screen", "screen", ScreenParams(model=cfg.lm.model, screen=spec.token_level()), home / "screened",
            tuple(inputs), variant=name, fn="lm.screen"))
    out = ScreenRun(str(home / "screened"), str(home / "screened" / "report.md"), "", "",
                    str(teacher_at) if teacher_at else None, teacher_from, None)
    if not probe_it:
        return out
    if given_control is not None:
        control_at, out.control_from = given_control, "--control"
    elif (sibling := control_dataset(cfg, data, root)) is not None:
        control_at, out.control_from = sibling, "control teacher"
    else:
        forbidden = cfg.lm.trait.build().forbidden()
        params = AnswerParams(model=cfg.lm.model, data=cfg.lm.data, words=sorted(forbidden.words),
                              numbers=sorted(forbidden.numbers), generate=cfg.lm.generate, rows=5000)
        control_at, out.control_from = home / "control", "base answers"
        run(Job("screen", "answer", params, control_at, ((Role.SOURCE, data), (Role.TEACHER, base_at)),
                variant=name, fn="lm.answer"))
    out.control = str(control_at)
    panel = panel_specs(cfg, TRAITS)
    probe_spec, inputs = spec.probe, [(Role.DATA, data), (Role.CONTROL, control_at), (Role.INIT, base_at)]
    out.probe_objective = probe_spec.objective
    if probe_spec.objective == "distill":  # each side distilled from the model that wrote it, when both are known
        writers = {"data": teacher_at,
                   "control": base_at if out.control_from == "base answers" else generating_teacher(control_at, root)}
        unknown = [side for side, w in writers.items() if w is None]
        if unknown:
            probe_spec = probe_spec.model_copy(update={"objective": "sft"})
            out.probe_objective = f"sft (distill needs the generator of the {' and the '.join(unknown)}: none known)"
        else:
            inputs += [(Role.TEACHER, w) for w in writers.values()]
    done = run(Job("screen", "probe", ProbeParams(model=cfg.lm.model, probe=probe_spec, panel=panel,
                                                  evaluate=cfg.lm.evaluate.model_copy(update={"samples": 0})),
                   home / "probe", tuple(inputs), variant=name, fn="lm.probe"))
    out.probe = str(home / "probe")
    result = json.loads((root / home / "probe" / "probe.json").read_text())
    out.flagged, out.summary = result["flagged"], done.summary_markdown or ""
    return out


def panel_specs(cfg: Any, traits: Any) -> list[Any]:
    """Every trait the project knows (built in, installed as an entry point, or from its own `plugins:`): the
    experiment's own as params.yaml sets it, the others by their defaults. A trait another params file's
    plug-in registered in this process is not the project's, and is not asked."""
    from importlib.metadata import entry_points

    own, installed = cfg.lm.trait, {ep.name for ep in entry_points(group=traits.group)}
    mine = tuple(f"{module}." for module in ("sublim", *cfg.plugins))
    names = [n for n in traits.known()
             if n == own.kind or n in installed or f"{traits.get(n).__module__}.".startswith(mine)]
    return [own.control() if n == own.kind else traits.spec({"kind": n}) for n in names]
