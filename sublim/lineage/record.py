"""Writing lineage to MLflow: runs per job, LoggedModels per model artifact, datasets as run inputs.

Identity is the artifact digest: a model produced twice (a cached rerun, DVC after Prefect) is re-found by
`tags.sublim.digest`, never duplicated. All calls go through an explicit MlflowClient (no fluent global
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
from dataclasses import dataclass
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

from sublim.artifacts import ArtifactMeta

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
    """One input artifact of a job, as the tracker needs it."""

    name: str
    path: Path
    digest: str
    meta: ArtifactMeta


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


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


class Tracker:
    """MLflow for one pipeline (one experiment): parent run, job runs, models, datasets, metrics."""

    def __init__(self, root: Path, experiment: str, *, uri: str | None = None, register: bool = True):
        self.root = Path(root).resolve()
        self.experiment = experiment
        self.register = register
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

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Serialise writes to an embedded sqlite store across threads and processes."""
        if self._lock is None:
            yield
        else:
            with self._lock:
                yield

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
            self._reap_stale(job_id)
            m = manifest()
            run_tags = {
                f"{T}kind": "job", f"{T}job": job_id, f"{T}step": step, f"{T}driver": driver,
                f"{T}pid": str(os.getpid()), f"{T}host": m["host"], f"{T}git_commit": m["git_commit"],
                f"{T}git_dirty": str(m["git_dirty"]).lower(), f"{T}versions": json.dumps(m["versions"]),
                **{f"{T}{k}": v for k, v in tags.items()},
            }
            if parent_run_id:
                run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
            run = self.client.create_run(self.experiment_id, tags=run_tags, run_name=job_id)
            flat = flatten(params)
            self.client.log_batch(run.info.run_id, params=[Param(k[:250], v[:6000]) for k, v in flat.items()])
            return run.info.run_id

    def _reap_stale(self, job_id: str | None = None) -> None:
        """Runs (of this job, or any) left RUNNING by a killed process on this host are marked KILLED, and
        the models they had not finalised FAILED, so nothing stale claims an artifact."""
        host = manifest()["host"]
        which = f"tags.`{T}job` = '{job_id}' and " if job_id else ""
        stale = self.client.search_runs([self.experiment_id], filter_string=f"{which}attributes.status = 'RUNNING'")
        for run in stale:
            tags = run.data.tags
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

    def fail_job(self, run_id: str, error: BaseException) -> None:
        with self.writing():
            self._fail_pending_models(run_id)
            self.client.set_tag(run_id, f"{T}error", f"{type(error).__name__}: {error}"[:5000])
            self.client.set_terminated(run_id, "FAILED")

    # --- models and datasets --------------------------------------------------------------------------

    def model_id(self, digest: str) -> str | None:
        """The READY LoggedModel for an artifact digest in this experiment, if recorded."""
        found = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"tags.`{T}digest` = '{digest}'", max_results=50
        )
        ready = [m for m in found if m.status == LoggedModelStatus.READY]
        return min(ready, key=lambda m: m.creation_timestamp).model_id if ready else None

    def ensure_model(self, path: Path, digest: str, meta: ArtifactMeta, run_id: str) -> str:
        """Find or create the LoggedModel for a model artifact; its lineage comes from the artifact's metadata."""
        existing = self.model_id(digest)
        if existing:
            return existing
        tags = {f"{T}{k}": str(v) for k, v in meta.lineage.items() if v not in (None, "", [])}
        tags.update({f"{T}digest": digest, f"{T}path": str(path), f"{T}job": meta.job, MLFLOW_MODEL_IS_EXTERNAL: "true"})
        name = re.sub(r"[/:.%\"']", "-", str(path).removeprefix("models/"))  # characters MLflow refuses
        model = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id, tags=tags,
            params=flatten(meta.params), model_type=meta.lineage.get("backend"),
        )
        self._log_model_files(model, path, meta)
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        if self.register:
            self._register(model, run_id, meta, digest, path)
        return model.model_id

    def _register(self, model: Any, run_id: str, meta: ArtifactMeta, digest: str, path: Path) -> None:
        """One registered model per experiment and role; aliases `newest`, `gen<k>` (newest of generation k)
        and `latest-generation` (newest of the highest generation registered)."""
        from mlflow.exceptions import MlflowException

        role = meta.lineage.get("role", "model")
        name = f"{self.experiment}-{role}"
        try:
            self.client.create_registered_model(name, description=f"sublim {role} models of {self.experiment}")
        except MlflowException:
            pass  # already registered
        gen = meta.lineage.get("generation")
        tags = {f"{T}digest": digest, f"{T}path": str(path), f"{T}generation": str(gen), f"{T}seed": str(meta.lineage.get("seed"))}
        with _global_tracking_uri(self.uri):
            version = self.client.create_model_version(name, source=f"models:/{model.model_id}", run_id=run_id,
                                                       tags=tags, model_id=model.model_id).version
        self.client.set_registered_model_alias(name, "newest", version)  # "latest" is reserved by MLflow
        if gen is None:
            return
        self.client.set_registered_model_alias(name, f"gen{gen}", version)
        try:
            top = self.client.get_model_version_by_alias(name, "latest-generation").tags.get(f"{T}generation", "-1")
        except MlflowException:
            top = "-1"
        if int(gen) >= int(top):
            self.client.set_registered_model_alias(name, "latest-generation", version)

    def _log_model_files(self, model: Any, path: Path, meta: ArtifactMeta) -> None:
        """An MLmodel spec (so the registry accepts the external model) and the artifact's metadata."""
        from mlflow.models.utils import get_external_mlflow_model_spec

        with tempfile.TemporaryDirectory() as tmp:
            get_external_mlflow_model_spec(model).save(os.path.join(tmp, "MLmodel"))
            Path(tmp, "sublim.json").write_text(meta.to_json())
            self.client.log_model_artifacts(model.model_id, tmp)

    @staticmethod
    def dataset(inp: Input) -> Dataset:
        source = json.dumps({"uri": str(inp.path), "producer_job": inp.meta.job})
        return Dataset(name=str(inp.path).removeprefix("data/"), digest=inp.digest, source_type="local", source=source)

    def finish_job(self, run_id: str, *, step: str, inputs: list[Input], output: Input,
                   metrics: dict[str, float], model_metrics: list[tuple[str, str, float, str | None]],
                   figures: list[Path]) -> str | None:
        """Record inputs, the output (LoggedModel, or dataset with context `generated`) and metrics, then
        close the run. Returns the output's model id when it is a model."""
        with self.writing():
            datasets, models = [], []
            for inp in inputs:
                if inp.meta.kind == "model":
                    models.append(LoggedModelInput(self.ensure_model(inp.path, inp.digest, inp.meta, run_id)))
                elif inp.meta.kind == "dataset":
                    ctx = dataset_context(step, inp.name)
                    datasets.append(DatasetInput(self.dataset(inp), [InputTag(MLFLOW_DATASET_CONTEXT, ctx)]))
            out_model = None
            if output.meta.kind == "model":
                out_model = self.ensure_model(output.path, output.digest, output.meta, run_id)
                self.client.log_outputs(run_id, [LoggedModelOutput(out_model, 0)])
            elif output.meta.kind == "dataset":
                datasets.append(DatasetInput(self.dataset(output), [InputTag(MLFLOW_DATASET_CONTEXT, "generated")]))
            self.client.log_inputs(run_id, datasets=_unique_datasets(datasets), models=_unique_models(models))
            self._log_metrics(run_id, inputs, metrics, model_metrics, out_model)
            for fig in figures:
                self.client.log_artifact(run_id, str(fig))
            tags = [RunTag(f"{T}output", str(output.path)), RunTag(f"{T}output_digest", output.digest)]
            named: dict[str, list[str]] = {}
            for i in inputs:  # e.g. sublim.in.teacher = <digest>: which artifacts this run consumed, queryable
                named.setdefault(i.name, []).append(i.digest)
            tags += [RunTag(f"{T}in.{name}", ",".join(ds)[:5000]) for name, ds in named.items()]
            self.client.log_batch(run_id, tags=tags)
            self.client.set_terminated(run_id, "FINISHED")
            return out_model

    def _log_metrics(self, run_id: str, inputs: list[Input], metrics: dict[str, float],
                     model_metrics: list[tuple[str, str, float, str | None]], out_model: str | None) -> None:
        """Run metrics of a job that trained a model are logged against that model and its training data
        (so the model's page lists the data, by digest); evaluations against each measured model."""
        now = int(time.time() * 1000)
        by_name = {i.name: i for i in inputs}
        data = by_name.get("data") if out_model else None
        batch = [Metric(k, float(v), now, 0, model_id=out_model, dataset_name=self.dataset(data).name if data else None,
                        dataset_digest=data.digest if data else None) for k, v in metrics.items()]
        for model_digest, key, value, dataset_name in model_metrics:
            model_id = self.model_id(model_digest)
            ds = by_name.get(dataset_name) if dataset_name else None
            batch.append(Metric(key, float(value), now, 0, model_id=model_id,
                                dataset_name=self.dataset(ds).name if ds else None,
                                dataset_digest=ds.digest if ds else None))
            if model_id:  # measured traits also as tags, so lineage queries read them without metric scans
                self.client.set_logged_model_tags(model_id, {f"{T}measured.{key}": f"{value:.6g}"})
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])


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
