"""Writing lineage to MLflow: the public recording API, and the pipeline's runs, models and datasets.

Every model and dataset is a node keyed by its content identity (identity.py, nodes.py): a model produced
twice (a cached rerun, DVC after Prefect, a sweep and a plain run) or recorded by hand is one node. The
pipeline records through the same NodeStore as `record_model` / `record_dataset` (what `sublim record` calls
for models and datasets sublim did not make). All calls go through an explicit MlflowClient (no fluent global
state), so threads, process pools and Dask workers record safely; writes to an embedded sqlite store are
serialised by a file lock so concurrent pipelines cannot corrupt it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    RunTag,
)
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_MODEL_IS_EXTERNAL, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from sublim.artifacts import ArtifactMeta, read_meta
from sublim.artifacts import digest as md5_of
from sublim.lineage import nodes as N
from sublim.lineage.identity import Identity, IdentityError, dataset_identity, model_identity, outputs_dataset, synthetic_dataset
from sublim.lineage.identity import digest as id_digest

T = "sublim."  # tag prefix
PACKAGES = ("sublim", "torch", "transformers", "peft", "mlflow", "prefect", "dvc", "numpy", "scipy")


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a real server), else the embedded store `sqlite:///<root>/mlflow.db`."""
    return MLFLOW_TRACKING_URI.get() or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def dataset_context(step: str, input_name: str) -> str:
    """How a run used a dataset: the evaluation split, the data a model learned from, or a filter's source."""
    if step.endswith(".evaluate"):
        return "evaluation"
    return {"data": "training", "source": "source"}.get(input_name, input_name)


@dataclass(frozen=True)
class Input:
    """One input artifact of a job, as the tracker needs it: `digest` is its DVC md5, `id` its content identity."""

    name: str
    path: Path
    digest: str
    meta: ArtifactMeta
    id: str | None = None


@cache
def manifest() -> dict[str, Any]:
    """Git commit, dirty flag and package versions: how to rebuild the environment of a run."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except Exception:  # noqa: BLE001  (an optional package that is not installed)
            versions[name] = "absent"
    return {"git_commit": git("rev-parse", "HEAD") or "unknown", "git_dirty": bool(git("status", "--porcelain")),
            "versions": versions, "host": socket.gethostname()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_URI_LOCK = threading.Lock()


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """The registry resolves `models:/<id>` through MLflow's process-global tracking URI, not the client's
    (an MLflow TODO in create_model_version); point it at our store for the call."""
    import mlflow

    from mlflow.tracking._tracking_service import utils

    with _URI_LOCK:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses): restore both exactly, or every
        # later project in this process, and every process it starts, would track into this store
        before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            utils._tracking_uri = before
            if env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env


class TrackingUnreachable(ConnectionError):
    """The tracking server named by MLFLOW_TRACKING_URI does not answer; raised before any compute."""


def _probe(uri: str, timeout: float = 10.0) -> None:
    """Fail in seconds, naming the URI (MLflow's own client would retry with backoff for minutes)."""
    import httpx

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as exc:
        raise TrackingUnreachable(f"MLFLOW_TRACKING_URI={uri}: tracking server unreachable "
                                  f"({type(exc).__name__}: {exc}); start it or unset the variable") from None


def client(uri: str) -> MlflowClient:
    """A client whose model registry is the same store as its tracking (MLflow would otherwise resolve the
    registry from process-global state, which another project in the same process may have set)."""
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _wal(db: Path) -> None:
    """Put an embedded store in write-ahead-log mode (persistent in the file): each MLflow write then costs one
    log append instead of a journal round trip (measured here: tracking overhead per job 55 -> ~10 ms), and
    readers such as `mlflow ui` never block writers."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")


def index_tags(db: Path) -> None:
    """Index LoggedModel tags by (key, value) in an embedded store: MLflow's own schema only indexes them by
    model, so every lineage level (`tags.sublim.id IN (...)`) scanned the whole tag table (measured: 60 ms ->
    2 ms per level at 20,000 nodes). A server's database can take the same index (see docs/lineage.md)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'logged_model_tags'").fetchone():
                conn.execute("CREATE INDEX IF NOT EXISTS sublim_logged_model_tags_kv "
                             "ON logged_model_tags (tag_key, tag_value)")
                conn.commit()
        except sqlite3.OperationalError:  # a read-only store: queries still work, only slower
            pass


def open_store(root: Path, uri: str | None = None) -> MlflowClient:
    """A client on the project's store (or MLFLOW_TRACKING_URI), the server probed, the embedded store indexed."""
    uri = uri or tracking_uri(root)
    if uri.startswith(("http://", "https://")):
        _probe(uri)
    found = client(uri)
    if is_embedded(uri):
        found.search_experiments(max_results=1)  # creates (migrates) a new store's tables
        db = Path(uri.removeprefix("sqlite:///"))
        _wal(db)
        index_tags(db)
    return found


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writes to an embedded sqlite store across threads and processes (a server needs none)."""
    if not is_embedded(uri):
        yield
        return
    with FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=600):
        yield


# --- what a pipeline artifact says about its node -----------------------------------------------------------

MODEL_EDGES = {"init": "init", "data": "trained_on"}  # job input role -> edge of the model it produces
DATASET_EDGES = {"teacher": "generated_by", "source": "derived_from", "data": "derived_from"}
DISTILLED = "teacher"  # a model job's teacher input: the student learned that teacher's outputs on its data
SYNTHETIC = "synthetic"  # a step's lineage fact: rows it generated in memory and trained on, described
NOT_FACTS = {"id", SYNTHETIC, "origin"}
CONTEXT = ("pipeline", "seed", "generation", "line", "init")  # facts a derived dataset inherits (for pictures)


def _targets(parents: list[tuple[str, str]], table: dict[str, str], edge: str) -> list[str]:
    """The identities of the inputs whose role maps to `edge` (job input roles compare as strings)."""
    return [node for role, node in parents if table.get(str(role)) == edge]


def artifact_identity(path: Path, kind: str, parents: list[tuple[str, str]]) -> Identity | None:
    """A pipeline artifact's identity (a model's base is its init input); None for metrics."""
    try:
        if kind == "model":
            return model_identity(path, next(iter(_targets(parents, MODEL_EDGES, "init")), None))
        return dataset_identity(path) if kind == "dataset" else None
    except IdentityError as exc:
        from sublim.artifacts import ArtifactError

        raise ArtifactError(str(exc)) from None


def artifact_id(path: Path, root: Path, meta: ArtifactMeta | None = None) -> str | None:
    """The identity of an input artifact: the one its metadata recorded, else computed (older artifacts)."""
    meta = meta or read_meta(path)
    if meta.kind not in ("model", "dataset"):
        return None
    recorded = meta.lineage.get("id")
    if isinstance(recorded, str) and recorded:
        return recorded
    init = [rel for key, rel in (k.partition(":")[::2] for k in meta.parents) if key == "init"]
    parents = [("init", pid) for pid in (artifact_id(Path(root) / init[0], root),) if pid] if init else []
    found = artifact_identity(path, meta.kind, parents)
    return found.id if found else None


def artifact_records(identity: Identity, meta: ArtifactMeta, parents: list[tuple[str, str]], *,
                     facts: dict[str, str], by: str, labels: dict[str, str] | None = None) -> list[N.Record]:
    """The records one pipeline artifact makes, its own last: edges from its inputs' roles, plus the datasets
    that exist only in memory (a teacher's outputs a student distilled; synthetic rows a step trained on)."""
    lineage, extra, labels = meta.lineage, [], labels or {}
    context = {N.T + k: str(lineage[k]) for k in CONTEXT if lineage.get(k) is not None}
    if identity.kind == "model":
        trained = _targets(parents, MODEL_EDGES, "trained_on")
        for teacher in (node for role, node in parents if str(role) == DISTILLED):
            outputs = outputs_dataset(teacher, trained)
            on = ", ".join(labels.get(d, d[:12]) for d in trained) or "its own prompts"
            extra.append(N.Record(outputs, f"distillation targets on {on}",
                                  N.Edges(generated_by=teacher, derived_from=tuple(trained)), facts=context, by=by))
            trained = [outputs.id]
        if lineage.get(SYNTHETIC):
            made_by = f"{meta.job.split('#')[0]} {json.dumps(meta.params, sort_keys=True)}"
            synth = synthetic_dataset(str(lineage[SYNTHETIC]), made_by)
            extra.append(N.Record(synth, f"{lineage[SYNTHETIC]} ({meta.job.split('#')[0]})",
                                  N.Edges(origin="synthetic"), facts=context, by=by))
            trained.append(synth.id)
        init = next((i for i in _targets(parents, MODEL_EDGES, "init") if i != identity.id), None)  # "same": its init
        edges = N.Edges(init=init, trained_on=tuple(dict.fromkeys(trained)))
    else:
        made = _targets(parents, DATASET_EDGES, "generated_by")
        derived = tuple(_targets(parents, DATASET_EDGES, "derived_from"))
        origin = lineage.get("origin") or (None if made or derived else "synthetic")  # made by sublim's own code
        edges = N.Edges(generated_by=next(iter(made), None), derived_from=derived, origin=origin)
    trait = lineage.get("trait")
    declared = (str(trait),) if trait not in (None, "", "none") else ()
    own_facts = {**{N.T + k: v if isinstance(v, str) else json.dumps(v) for k, v in lineage.items()
                    if k not in NOT_FACTS and v not in (None, "", [])}, **facts}
    name = str(facts.get(N.PATH) or meta.job)
    return [*extra, N.Record(identity, name, edges, declared=declared, facts=own_facts, by=by)]


def parents_of(inputs: list[Input]) -> list[tuple[str, str]]:
    return [(str(i.name), i.id) for i in inputs if i.id]


# --- the public recording API -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What `record_model` / `record_dataset` did: the node's identity and LoggedModel, new or merged into."""

    id: str
    kind: str
    how: str
    name: str
    model_id: str
    created: bool
    run_id: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _measured(measured: dict[str, float] | None) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((str(k), float(v)) for k, v in (measured or {}).items()))


def _edge(lineage, ref: str | None, root: Path, kind: str, option: str) -> str | None:
    """The identity an edge option names; a recorded target of the wrong kind is refused."""
    from sublim.lineage.query import RefError, resolve

    if ref is None:
        return None
    node_id = resolve(ref, lineage, root, kind=kind, what=option)
    found = lineage.nodes([node_id]).get(node_id)
    if found is not None and found.kind != kind:
        raise RefError(f"{option} {ref}: is a {found.kind}, not a {kind}")
    return node_id


def _source_identity(source: str, lineage, root: Path, kind: str, base: str | None) -> tuple[Identity, dict[str, str]]:
    """(identity, facts) of what is being recorded: local content, a pinned hub model, or a recorded node."""
    from sublim.lineage.identity import HUB_RE, hub_identity
    from sublim.lineage.query import RefError, check_ref, resolve

    what = "SOURCE" if kind == "model" else "PATH"
    check_ref(source, what)
    path = Path(source) if Path(source).is_absolute() else Path(root) / source
    if not path.exists() and Path(source).exists():
        path = Path(source)
    try:
        if path.exists():
            found = model_identity(path, base) if kind == "model" else dataset_identity(path)
            facts = {N.PATH: source}
            if (path / "sublim.json").is_file():
                facts[N.DIGEST] = md5_of(path)  # a sublim artifact: the md5 dvc.lock names
            return found, facts
        if kind == "model" and HUB_RE.match(source):
            return hub_identity(source), {}
    except IdentityError as exc:
        raise RefError(str(exc)) from None
    node = lineage.node(resolve(source, lineage, root, kind=kind, what=what))
    if node.kind != kind:
        raise RefError(f"{what} {source}: is a {node.kind}, not a {kind}")
    t = node.tags
    return Identity(node.id, kind, t.get(N.HOW, "recorded"), t.get(N.CONTENT, node.id), t.get(N.BASE), t.get(N.HUB)), {}


def _record(kind: str, source: str, edges: dict[str, Any], *, traits, measured, name, root, uri, by,
            from_card: bool = False) -> Recorded:
    from sublim.lineage.query import Lineage

    root = Path(root)
    store = open_store(root, uri)
    lineage = Lineage(store)
    named: dict[tuple[str, str], str] = {}  # (edge, value) -> where it came from, when not its option
    if from_card:
        from sublim.lineage.card import card_refs

        base_models, datasets = card_refs(Path(source) if Path(source).is_absolute() else root / source)
        if edges["init"] is None and len(base_models) > 1:
            from sublim.lineage.query import RefError

            raise RefError(f"{source}/README.md: base_model lists {len(base_models)} models (a merge); "
                           "give the one whose weights it started from with --init-from")
        card = f"{source}/README.md"
        if edges["init"] is None and base_models:
            edges["init"] = base_models[0]
            named[("init", base_models[0])] = f"{card} base_model"
        named.update({("trained_on", d): f"{card} datasets" for d in datasets if d not in edges["trained_on"]})
        edges["trained_on"] = [*edges["trained_on"], *datasets]
    kinds = {"init": "model", "generated_by": "model", "trained_on": "dataset", "derived_from": "dataset",
             "prompts": "dataset"}
    options = {"init": "--init-from", "generated_by": "--generated-by", "trained_on": "--trained-on",
               "derived_from": "--derived-from", "prompts": "--prompts"}
    resolved = {}
    for key, value in edges.items():
        if key == "origin":
            resolved[key] = value
        elif isinstance(value, (list, tuple)):
            resolved[key] = tuple(dict.fromkeys(_edge(lineage, v, root, kinds[key], named.get((key, v), options[key]))
                                                for v in value))
        else:
            resolved[key] = _edge(lineage, value, root, kinds[key], named.get((key, value), options[key]))
    identity, facts = _source_identity(source, lineage, root, kind, resolved.get("init"))
    record = N.Record(identity, name or (facts.get(N.PATH) or identity.hub or source).rstrip("/"), N.Edges(**resolved),
                      declared=tuple(dict.fromkeys(traits)), measured=_measured(measured), facts=facts, by=by or N.user())
    with store_lock(store.tracking_uri):
        writer = N.NodeStore(store, root.resolve() if is_embedded(store.tracking_uri) else None)
        existing = writer.check(record)  # read once, refused before the run opens
        home = N.RECORDED_EXPERIMENT if kind == "model" else N.DATASETS_EXPERIMENT
        run = store.create_run(writer.experiment(home), run_name=f"record {kind} {N.safe_name(record.name)}",
                               tags={f"{T}kind": "record", f"{T}node": identity.id, "mlflow.user": record.by})
        model_id, created = writer.put(record, experiment=home, run_id=run.info.run_id, existing=existing)
        now_ms = int(time.time() * 1000)
        if record.measured:  # on the node's page in the MLflow UI, with who (the run's user) and when
            store.log_batch(run.info.run_id, metrics=[Metric(k, v, now_ms, 0, model_id=model_id) for k, v in record.measured])
        store.log_inputs(run.info.run_id, models=[LoggedModelInput(model_id)])
        store.set_terminated(run.info.run_id, "FINISHED")
    return Recorded(identity.id, kind, identity.how, record.name, model_id, created is not None, run.info.run_id)


def record_model(source: str | Path, *, init_from: str | None = None, trained_on: list[str] | tuple[str, ...] = (),
                 traits: list[str] | tuple[str, ...] = (), measured: dict[str, float] | None = None,
                 name: str | None = None, from_card: bool = False, root: Path | str = ".", uri: str | None = None,
                 by: str | None = None) -> Recorded:
    """Record a model sublim did not train: a local directory (identified by its weight tensors) or a hub
    model pinned as `org/name@commit` (never fetched), or add traits to a recorded one.

    `init_from`: the model whose weights it started from (none: a root, pretrained from scratch);
    `trained_on`: datasets it was fine-tuned on (none, with `init_from`: a derivative such as a quantised or
    merged copy). References: paths, content ids, m-... ids, name@alias, name/version, org/name@commit.
    `from_card`: also read `base_model` and `datasets` from the directory's README.md front matter."""
    return _record("model", str(source), {"init": init_from, "trained_on": list(trained_on)}, traits=traits,
                   measured=measured, name=name, root=root, uri=uri, by=by, from_card=from_card)


def record_dataset(path: str | Path, *, generated_by: str | None = None, prompts: str | None = None,
                   origin: str | None = None, derived_from: list[str] | tuple[str, ...] = (),
                   name: str | None = None, root: Path | str = ".", uri: str | None = None,
                   by: str | None = None) -> Recorded:
    """Record a dataset (a file or directory, identified by its content): the model that generated it (with
    the prompts it was given), or its origin (human | external | synthetic), and the datasets it was
    filtered or derived from. A dataset with none of these audits as unknown provenance."""
    return _record("dataset", str(path), {"generated_by": generated_by, "prompts": prompts, "origin": origin,
                                          "derived_from": list(derived_from)},
                   traits=(), measured=None, name=name, root=root, uri=uri, by=by)


SWEEP_OUTPUTS = "sweeps"  # sublim.sweep.SWEEPS, where sweep points write (not imported: it plans pipelines)


def registered_name(experiment: str, meta: ArtifactMeta) -> str:
    """`<experiment>-<step>[-<line>][-<init>]` (`sublim-lm-student-control-other`), in the characters a
    `name@alias` reference allows."""
    kind = meta.step.rpartition(".")[2] or meta.lineage.get("role", "model")
    parts = [experiment, kind, *(str(meta.lineage[k]) for k in ("line", "init") if meta.lineage.get(k))]
    return re.sub(r"[^\w.-]", "-", "-".join(parts))


class Tracker:
    """MLflow for one pipeline (one experiment): parent run, job runs, lineage nodes, datasets, metrics."""

    def __init__(self, root: Path, experiment: str, *, uri: str | None = None, register: bool = True):
        self.root = Path(root).resolve()
        self.experiment = experiment
        self.register = register
        self._registered: set[str] = set()  # registered model names known to exist
        self._parent_experiments: dict[str, str] = {}  # pipeline run id -> its experiment
        self._batch = threading.local()  # the batch of jobs this thread is recording (see `batch`)
        self.uri = uri or tracking_uri(self.root)
        if self.uri.startswith(("http://", "https://")):
            _probe(self.uri)
        embedded = is_embedded(self.uri)
        lock_path = Path(self.uri.removeprefix("sqlite:///") + ".lock") if embedded else None
        self._lock = FileLock(str(lock_path), timeout=600) if lock_path else None
        with self.writing():  # creating the client creates (migrates) a new store: one process at a time
            self.client = client(self.uri)
            if embedded:
                _wal(Path(self.uri.removeprefix("sqlite:///")))
            self.experiment_id = self._experiment(experiment, embedded)
            if embedded:
                index_tags(Path(self.uri.removeprefix("sqlite:///")))
        self.nodes = N.NodeStore(self.client, self.root if embedded else None)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Serialise writes to an embedded sqlite store across threads and processes."""
        if self._lock is None:
            yield
        else:
            with self._lock:
                yield

    @contextlib.contextmanager
    def batch(self, job_ids: list[str]) -> Iterator[None]:
        """Record a batch of jobs (one step's jobs computed together) with per-batch bookkeeping done once: one
        search for stale runs of these jobs instead of one per job, and the registry's aliases set once, as the
        batch's last registration per model and generation would have left them (aliases are the newest
        version: setting them per model only rewrote them; measured: ~20 ms a model)."""
        with self.writing():
            self._reap_stale(job_ids)
        self._batch.aliases = {}
        try:
            yield
        finally:
            pending, self._batch.aliases = self._batch.aliases, None
            with self.writing():
                for name, versions in pending.items():
                    self._set_aliases(name, versions)

    def _pending_aliases(self) -> dict[str, list[tuple[str, Any]]] | None:
        """The aliases this thread's batch will set when it ends (None: not in a batch)."""
        return getattr(self._batch, "aliases", None)

    def _experiment(self, name: str, embedded: bool) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (self.root / "mlartifacts").as_uri() if embedded else None
        return self.client.create_experiment(name, artifact_location=location)

    # --- runs ----------------------------------------------------------------------------------------

    def open_pipeline_run(self, *, driver: str, name: str, config: dict[str, Any], reuse_key: str | None = None) -> str:
        """The parent run of one pipeline invocation. With `reuse_key`, successive DVC stage processes of
        the same params share one parent instead of each making its own."""
        with self.writing():
            self._reap_stale()
            if reuse_key:
                found = self.client.search_runs(
                    [self.experiment_id],
                    filter_string=f"tags.`{T}reuse_key` = '{reuse_key}' and tags.`{T}kind` = 'pipeline'",
                    max_results=1,
                    order_by=["attributes.start_time DESC"],
                )
                if found:
                    return found[0].info.run_id
            m = manifest()
            tags = {f"{T}kind": "pipeline", f"{T}driver": driver, f"{T}git_commit": m["git_commit"],
                    f"{T}pid": str(os.getpid()), f"{T}host": m["host"],
                    f"{T}git_dirty": str(m["git_dirty"]).lower(), **({f"{T}reuse_key": reuse_key} if reuse_key else {})}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
            self.client.log_dict(run.info.run_id, {**m, "params": config}, "manifest.json")
            if reuse_key:  # a DVC parent stays open across stage processes; each stage closes it again
                self.client.set_terminated(run.info.run_id, "FINISHED")
            return run.info.run_id

    def close_pipeline_run(self, run_id: str, status: str = "FINISHED") -> None:
        with self.writing():
            self.client.set_terminated(run_id, status)

    def start_job(self, job_id: str, step: str, *, parent_run_id: str | None, driver: str,
                  params: dict[str, Any], tags: dict[str, str]) -> str:
        with self.writing():
            if self._pending_aliases() is None:  # in a batch, its jobs' stale runs were reaped already
                self._reap_stale([job_id])
            m = manifest()
            run_tags = {
                f"{T}kind": "job", f"{T}job": job_id, f"{T}step": step, f"{T}driver": driver,
                f"{T}pid": str(os.getpid()), f"{T}host": m["host"], f"{T}git_commit": m["git_commit"],
                f"{T}git_dirty": str(m["git_dirty"]).lower(), f"{T}versions": json.dumps(m["versions"]),
                **{f"{T}{k}": v for k, v in tags.items()},
            }
            if parent_run_id and self._same_experiment(parent_run_id):
                run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
            elif parent_run_id:  # a job of another experiment's (the matrix runs the lm bases): MLflow nests runs
                run_tags[f"{T}requested_by"] = parent_run_id  # within one experiment only, else they show orphaned
            run = self.client.create_run(self.experiment_id, tags=run_tags, run_name=job_id)
            flat = flatten(params)
            self.client.log_batch(run.info.run_id, params=[Param(k[:250], v[:6000]) for k, v in flat.items()])
            return run.info.run_id

    def _same_experiment(self, run_id: str) -> bool:
        if run_id not in self._parent_experiments:
            self._parent_experiments[run_id] = self.client.get_run(run_id).info.experiment_id
        return self._parent_experiments[run_id] == self.experiment_id

    def _reap_stale(self, job_ids: list[str] | None = None) -> None:
        """Runs (of these jobs, or any) left RUNNING by a killed process on this host are marked KILLED, and
        the models they had not finalised FAILED, so nothing stale claims an artifact."""
        host = manifest()["host"]
        which = f"tags.`{T}job` = '{job_ids[0]}' and " if job_ids and len(job_ids) == 1 else ""
        stale = self.client.search_runs([self.experiment_id], filter_string=f"{which}attributes.status = 'RUNNING'")
        for run in stale:
            tags = run.data.tags
            if job_ids is not None and tags.get(f"{T}job") not in job_ids:
                continue
            if tags.get(f"{T}host") == host and not _pid_alive(int(tags.get(f"{T}pid", "0") or 0)):
                self._fail_pending_models(run.info.run_id)
                self.client.set_tag(run.info.run_id, f"{T}error", "process died before the job finished")
                self.client.set_terminated(run.info.run_id, "KILLED")

    def _fail_pending_models(self, run_id: str) -> None:
        pending = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        for model in pending:
            if model.status == LoggedModelStatus.PENDING:
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)

    def fail_job(self, run_id: str, error: BaseException, stopped_by: str | None = None) -> None:
        """The job's run ends FAILED, or KILLED when the command was stopped from outside (Ctrl-C, a SIGTERM:
        a BaseException that is no error of the job's) or the job was, by `stopped_by`, the job of its batch that
        failed (it runs again without it), so a query for failed jobs finds only real failures."""
        told = f"{type(error).__name__}: {error}"
        if stopped_by:
            told = f"stopped: {stopped_by}, in the same batch, failed ({told}); this job runs again without it"
        with self.writing():
            self._fail_pending_models(run_id)
            self.client.set_tag(run_id, f"{T}error", told[:5000])
            failed = isinstance(error, Exception) and not stopped_by
            self.client.set_terminated(run_id, "FAILED" if failed else "KILLED")

    # --- lineage nodes and datasets --------------------------------------------------------------------

    def node_model(self, node_id: str) -> str | None:
        """The LoggedModel of a recorded node, if any."""
        found = self.nodes.find(node_id)
        return found.model_ids[0] if found else None

    def put_artifact(self, path: Path, digest: str, meta: ArtifactMeta, identity: Identity,
                     parents: list[tuple[str, str]], run_id: str, labels: dict[str, str] | None = None) -> str:
        """Record an artifact's node (and the in-memory datasets it learned from); returns its LoggedModel id.
        A model node is new only for new weights; its MLmodel spec, sublim.json and registry entry come then."""
        facts = {f"{T}digest": digest, f"{T}path": str(path), f"{T}job": meta.job, f"{T}run": run_id}
        by = f"{N.user()} (sublim {meta.job})"
        *extra, own = artifact_records(identity, meta, parents, facts=facts, by=by, labels=labels)
        for record in extra:
            self.nodes.put(record, experiment=N.DATASETS_EXPERIMENT)
        if meta.kind != "model":
            return self.nodes.put(own, experiment=N.DATASETS_EXPERIMENT)[0]
        own = replace(own, facts={**own.facts, MLFLOW_MODEL_IS_EXTERNAL: "true"})
        model_id, created = self.nodes.put(own, experiment=self.experiment, run_id=run_id,
                                           model_type=meta.lineage.get("backend"))
        register = self.register and not self._in_sweep(path)
        if created is not None:  # as finalised, with its tags: no read-back
            self._log_model_files(created, meta)
            if register:
                self._register(created, run_id, meta, digest, path)
        elif register:  # these weights again (a setting changed and changed back): the aliases follow them
            self._reregister(model_id, run_id, meta, digest, path)
        return model_id

    def _in_sweep(self, path: Path) -> bool:
        """A sweep point's model is not registered: its settings are not the pipeline's, and it would take the
        pipeline's registered names and aliases (`sublim-mlp-student-shared@newest` a point's student). It stays
        a LoggedModel with its lineage, audited by its path."""
        rel = Path(path)
        if rel.is_absolute():
            with contextlib.suppress(ValueError):
                rel = rel.relative_to(self.root)
        return rel.parts[:1] == (SWEEP_OUTPUTS,)

    def _reregister(self, model_id: str, run_id: str, meta: ArtifactMeta, digest: str, path: Path) -> None:
        """Point the aliases at the registered version of a model made again, registering it if its name has
        none (registered before models were named by step, line and init)."""
        name = self._registered_model(meta)
        versions = self.client.search_model_versions(f"name = '{name}'")
        mine = [v for v in versions if (v.model_id or v.source.removeprefix("models:/")) == model_id]
        if not mine:
            self._register(self.client.get_logged_model(model_id), run_id, meta, digest, path)
            return
        self._alias(name, max(mine, key=lambda v: int(v.version)).version, meta.lineage.get("generation"))

    def _alias(self, name: str, version: str, gen: Any) -> None:
        """Aliases to `version` now, or when the batch ends."""
        pending = self._pending_aliases()
        if pending is None:
            self._set_aliases(name, [(version, gen)])
        else:
            pending.setdefault(name, []).append((version, gen))

    def _registered_model(self, meta: ArtifactMeta) -> str:
        """The name of the registered model `meta`'s kind of model belongs to, created if missing (checked once
        per tracker: a registered model is never deleted by sublim)."""
        from mlflow.exceptions import MlflowException

        name = registered_name(self.experiment, meta)
        if name not in self._registered:
            try:
                kind = ", ".join(f"{k} {meta.lineage[k]}" for k in ("role", "line", "init") if meta.lineage.get(k))
                self.client.create_registered_model(name, description=f"sublim {meta.step} models of "
                                                                      f"{self.experiment} ({kind})")
            except MlflowException:
                self.client.get_registered_model(name)  # it exists (a rerun, another process): fine; else re-raises
            self._registered.add(name)
        return name

    def ensure_input(self, inp: Input) -> str:
        """The node of an input artifact; one that was never recorded (say, a kill between writing it and
        recording it) is recorded now from its metadata, its edges named by its parents' identities."""
        found = self.node_model(inp.id) if inp.id else None
        if found:
            return found
        parents, labels = [], {}
        for key, md5 in inp.meta.parents.items():
            role, _, rel = key.partition(":")
            parent = self.root / rel
            try:
                same = parent.exists() and md5_of(parent) == md5
                pid = artifact_id(parent, self.root) if same else None
            except (OSError, ValueError):
                pid = None
            known = pid or next((n.tags.get(N.ID) for n in N.find_ready(self.client, self.nodes.all_experiments(),
                                                                        N.DIGEST, md5)), None)
            parents.append((role, known or id_digest("unrecorded artifact", md5)))  # audits as unknown
            labels[parents[-1][1]] = rel
        identity = artifact_identity(self.root / inp.path, inp.meta.kind, parents)
        return self.put_artifact(inp.path, inp.digest, inp.meta, identity, parents, self._orphan_run(inp), labels)

    def _orphan_run(self, inp: Input) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"recovered {inp.meta.job}",
                                     tags={f"{T}kind": "recovered", f"{T}job": inp.meta.job})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def _register(self, model: Any, run_id: str, meta: ArtifactMeta, digest: str, path: Path) -> None:
        """One registered model per experiment, step, line and init (`sublim-lm-student-trait-shared`: its
        versions are the seeds' and reruns' models of one kind, so an alias never hands out a control model for
        a trait one); aliases `newest`, `gen<k>` (newest of generation k) and `latest-generation` (newest of the
        highest generation registered)."""
        name = self._registered_model(meta)
        gen = meta.lineage.get("generation")
        facts = {"digest": digest, "path": path, "generation": gen, "seed": meta.lineage.get("seed"),
                 "id": model.tags.get(N.ID, "")}
        tags = {f"{T}{k}": str(v) for k, v in facts.items() if v is not None}  # a base has no generation: no tag
        with _global_tracking_uri(self.uri):
            version = self.client.create_model_version(name, source=f"models:/{model.model_id}", run_id=run_id,
                                                       tags=tags, model_id=model.model_id).version
        self._alias(name, version, gen)

    def _set_aliases(self, name: str, versions: list[tuple[str, Any]]) -> None:
        """Point `newest` at the last of `versions` (registered in this order), `gen<k>` at the last of each
        generation, and `latest-generation` at the newest version of the highest generation any `gen<k>` names."""
        self.client.set_registered_model_alias(name, "newest", versions[-1][0])  # "latest" is reserved by MLflow
        by_gen = {gen: number for number, gen in versions if gen is not None}
        for gen, number in by_gen.items():
            self.client.set_registered_model_alias(name, f"gen{gen}", number)
        if not by_gen:
            return
        aliases = self.client.get_registered_model(name).aliases
        gens = [int(a[3:]) for a in aliases if a.startswith("gen") and a[3:].lstrip("-").isdigit()]
        top = aliases.get(f"gen{max(gens)}")
        if top and aliases.get("latest-generation") != top:
            self.client.set_registered_model_alias(name, "latest-generation", top)

    def _log_model_files(self, model: Any, meta: ArtifactMeta) -> None:
        """An MLmodel spec (so the registry accepts the external model) and the artifact's metadata."""
        from mlflow.models.utils import get_external_mlflow_model_spec

        with tempfile.TemporaryDirectory() as tmp:
            get_external_mlflow_model_spec(model).save(os.path.join(tmp, "MLmodel"))
            Path(tmp, "sublim.json").write_text(meta.to_json())
            self.client.log_model_artifacts(model.model_id, tmp)

    @staticmethod
    def dataset(inp: Input) -> Dataset:
        source = json.dumps({"uri": str(inp.path), "producer_job": inp.meta.job, "id": inp.id})
        return Dataset(name=str(inp.path).removeprefix("data/"), digest=inp.digest, source_type="local", source=source)

    def finish_job(self, run_id: str, *, step: str, inputs: list[Input], output: Input, identity: Identity | None,
                   metrics: dict[str, float], model_metrics: list[tuple[str, str, float, str | None]],
                   figures: list[Path], outcome: dict[str, Any] | None = None) -> str | None:
        """Record the inputs, the output's lineage node (a model: run output; a dataset: run input with
        context `generated`) and metrics, then close the run. Returns the output's model id when a model.
        `model_metrics`: (node id, key, value, dataset input name) measurements of other models. `outcome`:
        what the job reports to its driver, kept as a tag for `recorded_outcome`."""
        with self.writing():
            node_models = {i.id: self.ensure_input(i) for i in inputs if i.id and i.meta.kind in ("model", "dataset")}
            models = [LoggedModelInput(node_models[i.id]) for i in inputs if i.id and i.meta.kind == "model"]
            datasets = [DatasetInput(self.dataset(i), [InputTag(MLFLOW_DATASET_CONTEXT, dataset_context(step, i.name))])
                        for i in inputs if i.meta.kind == "dataset"]
            out_model = None
            if identity is not None:
                node = self.put_artifact(output.path, output.digest, output.meta, identity, parents_of(inputs), run_id,
                                         {i.id: str(i.path) for i in inputs if i.id})
                node_models[identity.id] = node
                if output.meta.kind == "model":
                    out_model = node
                    self.client.log_outputs(run_id, [LoggedModelOutput(out_model, 0)])
                else:
                    datasets.append(DatasetInput(self.dataset(output), [InputTag(MLFLOW_DATASET_CONTEXT, "generated")]))
            self.client.log_inputs(run_id, datasets=_unique_datasets(datasets), models=_unique_models(models))
            for fig in figures:
                self.client.log_artifact(run_id, str(fig))
            tags = [RunTag(f"{T}output", str(output.path)), RunTag(f"{T}output_digest", output.digest)]
            if identity is not None:
                tags.append(RunTag(f"{T}output_id", identity.id))
            told = json.dumps({**outcome, "model_id": out_model}) if outcome else ""
            if told and len(told) <= MAX_TAG_VAL_LENGTH:  # a longer one (a huge summary) is not taken up: the job reruns
                tags.append(RunTag(f"{T}outcome", told))
            named: dict[str, list[str]] = {}
            for i in inputs:  # e.g. sublim.in.teacher = <digest>: which artifacts this run consumed, queryable
                named.setdefault(i.name, []).append(i.digest)
            tags += [RunTag(f"{T}in.{name}", ",".join(ds)[:5000]) for name, ds in named.items()]
            self._log_metrics(run_id, inputs, metrics, model_metrics, out_model, node_models, tags)
            self.client.set_terminated(run_id, "FINISHED")
            return out_model

    def recorded_outcome(self, key: str, output_digest: str) -> dict[str, Any] | None:
        """What a finished run of this exact job (cache key) reported, if it made the output now on disk: a flow
        takes up what `dvc repro` or `sublim run` made and recorded, instead of computing it again."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=f"tags.`{T}cache_key` = '{key}' and tags.`{T}output_digest` = '{output_digest}' "
                          f"and attributes.status = 'FINISHED'")
        told = runs[0].data.tags.get(f"{T}outcome") if runs else None
        return json.loads(told) if told else None

    def _log_metrics(self, run_id: str, inputs: list[Input], metrics: dict[str, float],
                     model_metrics: list[tuple[str, str, float, str | None]], out_model: str | None,
                     node_models: dict[str, str], tags: list[RunTag]) -> None:
        """Run metrics of a job that trained a model are logged against that model and its training data
        (so the model's page lists the data, by digest); evaluations against each measured model, whose
        node also keeps the latest value as a tag (lineage queries read traits without metric scans). The
        run's `tags` go in the first batch: one sqlite transaction per job fewer."""
        now_ms = int(time.time() * 1000)
        by_name = {i.name: i for i in inputs}
        data = by_name.get("data") if out_model else None
        batch = [Metric(k, float(v), now_ms, 0, model_id=out_model, dataset_name=self.dataset(data).name if data else None,
                        dataset_digest=data.digest if data else None) for k, v in metrics.items()]
        measured: dict[str, dict[str, str]] = {}
        stamp = f"by {N.user()} (sublim run {run_id}) at {N.now()}"
        for node_id, key, value, dataset_name in model_metrics:
            model_id = node_models.get(node_id) or self.node_model(node_id)
            ds = by_name.get(dataset_name) if dataset_name else None
            batch.append(Metric(key, float(value), now_ms, 0, model_id=model_id,
                                dataset_name=self.dataset(ds).name if ds else None,
                                dataset_digest=ds.digest if ds else None))
            if model_id:
                measured.setdefault(model_id, {}).update({f"{N.MEASURED}{key}": f"{value:.6g}",
                                                          f"{N.MEASURED_BY}{key}": stamp})
        for model_id, latest in measured.items():
            self.client.set_logged_model_tags(model_id, latest)
        for i in range(0, max(len(batch), 1), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500], tags=tags if i == 0 else [])


def _unique_datasets(items: list[DatasetInput]) -> list[DatasetInput]:
    seen, out = set(), []
    for d in items:
        key = (d.dataset.digest, d.tags[0].value)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _unique_models(items: list[LoggedModelInput]) -> list[LoggedModelInput]:
    seen, out = set(), []
    for m in items:
        if m.model_id not in seen:
            seen.add(m.model_id)
            out.append(m)
    return out
