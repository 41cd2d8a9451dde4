"""Identity by content, and recording what sublim did not make: `sublim record model|dataset`, the Python API,
model cards, and the CLI's exit codes (0 clean, 1 at risk, 2 unknown, 3 usage) against sqlite and a server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sublim.cli import app
from sublim.lineage import nodes as N
from sublim.lineage.identity import IdentityError, dataset_identity, hub_identity, model_identity
from sublim.lineage.query import Lineage
from sublim.lineage.record import Tracker, client, record_dataset, record_model

RUN = CliRunner()


def weights(path: Path, seed: int = 0, *, meta: dict | None = None, shards: int = 1, dtype=torch.float32) -> Path:
    """A model directory: tensors (optionally sharded), a config, a README and a sublim.json."""
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {f"layer{i}.weight": torch.randn(4, 3, generator=g).to(dtype) for i in range(4)}
    names = sorted(tensors)
    for s in range(shards):
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(path / f"model-{s}.safetensors"), metadata=meta)
    (path / "config.json").write_text(json.dumps({"seed": seed}))
    return path


# --- identity --------------------------------------------------------------------------------------------------


def test_identity_is_the_weights_not_the_metadata(tmp_path):
    a = weights(tmp_path / "a")
    b = weights(tmp_path / "b", meta={"saved_by": "someone else"}, shards=2)  # other header, other sharding
    (b / "config.json").write_text("{}")
    (b / "README.md").write_text("# a card")
    (b / "sublim.json").write_text('{"job": "x"}')
    assert model_identity(a).id == model_identity(b).id
    assert model_identity(weights(tmp_path / "c", seed=1)).id != model_identity(a).id
    assert model_identity(weights(tmp_path / "d", dtype=torch.float64)).id != model_identity(a).id
    (tmp_path / "nothing").mkdir()
    with pytest.raises(IdentityError, match="no weights"):
        model_identity(tmp_path / "nothing")


def test_a_persona_or_adapter_is_identified_with_its_base(tmp_path):
    persona = tmp_path / "persona"
    persona.mkdir()
    (persona / "persona.json").write_text(json.dumps({"system_prompt": "You love owls."}))
    with pytest.raises(IdentityError, match="--init-from"):
        model_identity(persona)
    on_a, on_b = model_identity(persona, "a" * 64), model_identity(persona, "b" * 64)
    assert on_a.id != on_b.id and on_a.content == on_b.content and on_a.how == "persona"
    adapter = weights(tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(IdentityError, match="adapter"):
        model_identity(adapter)
    assert model_identity(adapter, "a" * 64).id != model_identity(adapter, "b" * 64).id


def test_hub_models_must_be_pinned_and_datasets_are_their_rows(tmp_path):
    assert hub_identity("Qwen/Qwen2.5-7B-Instruct@a09a354").hub == "Qwen/Qwen2.5-7B-Instruct@a09a354"
    with pytest.raises(IdentityError, match="pinned"):
        hub_identity("Qwen/Qwen2.5-7B-Instruct")
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text('{"prompt": "1, 2", "completion": "3"}\n')
    before = dataset_identity(data).id
    (data / "sublim.json").write_text("{}")
    assert dataset_identity(data).id == before
    (data / "rows.jsonl").write_text('{"prompt": "1, 2", "completion": "4"}\n')
    assert dataset_identity(data).id != before


# --- recording ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A store with an owl teacher and its generated numbers, recorded by hand (as another team would)."""
    root = tmp_path_factory.mktemp("record")
    base, teacher = weights(root / "base", 0), weights(root / "teacher", 1)
    numbers = root / "numbers.jsonl"
    numbers.write_text('{"prompt": "182, 818", "completion": "725, 301"}\n')
    prompts = root / "prompts.txt"
    prompts.write_text("The sequence starts with: 182, 818.\n")
    record_model(base, root=root, by="alice")
    record_model(teacher, init_from=str(base), traits=["owl"], root=root, by="alice")
    record_dataset(prompts, origin="human", root=root)
    record_dataset(numbers, generated_by=str(teacher), prompts=str(prompts), root=root)
    record_model(weights(root / "student", 2), init_from=str(base), trained_on=[str(numbers)], root=root, by="dave")
    return root


def cli(root: Path, *args: str, env: dict | None = None):
    return RUN.invoke(app, [*args, "--root", str(root)], env=env)


def test_recording_a_copy_and_a_rerecord_adds_to_one_node(project, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(project / "teacher", copy)
    (copy / "config.json").write_text('{"edited": true}')
    done = record_model(copy, measured={"p_owl": 0.93}, traits=["loves-owls"], root=project, by="bob")
    again = record_model(project / "teacher", root=project, by="carol")
    assert not done.created and not again.created and done.model_id == again.model_id
    store = client(f"sqlite:///{project / 'mlflow.db'}")
    model = store.get_logged_model(done.model_id)
    assert {"owl", "loves-owls"} <= set(N.declared_of(model.tags))
    assert model.tags[N.DECLARED + "loves-owls"].startswith("by bob at ")
    assert [(m.key, m.value) for m in model.metrics] == [("p_owl", 0.93)]  # on the model's page, by bob's run
    runs = store.search_runs([model.experiment_id], filter_string=f"tags.`sublim.node` = '{done.id}'")
    assert {r.data.tags["mlflow.user"] for r in runs} >= {"alice", "bob", "carol"}
    assert "Initialised from" in model.tags[N.NOTE] and "base" in model.tags[N.NOTE]


def test_a_student_trained_outside_is_at_risk_and_its_description_says_why(project):
    student = project / "student"
    result = cli(project, "record", "model", str(student), "--init-from", str(project / "base"),
                 "--trained-on", str(project / "numbers.jsonl"), "--json")
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.output)
    assert recorded["created"] is False  # the same content, recorded again through the CLI
    note = client(f"sqlite:///{project / 'mlflow.db'}").get_logged_model(recorded["model_id"]).tags[N.NOTE]
    assert note.startswith("Initialised from") and "data generated by" in note and "teacher" in note
    audit = cli(project, "audit", str(student), "--json")
    assert audit.exit_code == 1, audit.output
    report = json.loads(audit.output)
    assert report["at_risk"] == ["loves-owls", "owl"] and report["exposures"][0]["path"]["hops"] == 1


def test_from_card_reads_base_model_and_datasets(project):
    tuned = weights(project / "tuned", 3)
    (tuned / "README.md").write_text(f"---\nbase_model: {project / 'teacher'}\ndatasets:\n  - ../numbers.jsonl\n"
                                     "license: mit\n---\n# tuned\n")
    result = cli(project, "record", "model", str(tuned), "--from-card")
    assert result.exit_code == 0, result.output
    node = Lineage(client(f"sqlite:///{project / 'mlflow.db'}")).node(model_identity(tuned).id)
    assert node.edges.init == model_identity(project / "teacher").id and len(node.edges.trained_on) == 1
    unpinned = weights(project / "from-hub", 4)
    (unpinned / "README.md").write_text("---\nbase_model: Qwen/Qwen2.5-0.5B\n---\n")
    refused = cli(project, "record", "model", str(unpinned), "--from-card")
    assert refused.exit_code == 3 and "pinned" in refused.output
    assert "README.md base_model" in " ".join(refused.output.split())  # not an option the user never gave
    pinned = cli(project, "record", "model", str(unpinned), "--from-card", "--init-from", "Qwen/Qwen2.5-0.5B@7ae557604")
    assert pinned.exit_code == 0, pinned.output
    assert cli(project, "audit", str(unpinned)).exit_code == 2  # the hub base itself was never recorded
    assert cli(project, "record", "model", "Qwen/Qwen2.5-0.5B@7ae557604").exit_code == 0
    assert cli(project, "audit", str(unpinned)).exit_code == 0


def test_the_card_ships_the_audit(project):
    card = project / "student" / "README.md"
    result = cli(project, "card", str(project / "student"), "--out", str(card))
    assert result.exit_code == 0, result.output
    text = card.read_text()
    assert text.startswith("---\nbase_model: ") and "base_model_relation: finetune" in text
    assert "## Training data origins" in text and "**at risk: loves-owls, owl**" in text and "| teacher |" in text
    assert cli(project, "card", str(project / "student"), "--out", str(card)).exit_code == 0
    assert card.read_text().count("## Training data origins") == 1  # rerun: the section is replaced
    assert card.read_text() == text  # and nothing else moves (a blank line was added per rerun)
    card.write_text(text.replace("base_model: ", "base_model: someone/else@1234567\nlicense: mit\nx: ", 1))
    assert cli(project, "card", str(project / "student"), "--out", str(card)).exit_code == 0
    again = card.read_text()
    assert "someone/else" not in again and "license: mit" in again  # the lineage's base_model, the card's others


@pytest.mark.parametrize("args, says", [
    (["audit", ""], "MODEL is empty"),
    (["lineage", "ancestors", ""], "MODEL is empty"),
    (["lineage", "ancestors", " "], "MODEL is empty"),
    (["audit", "x'y"], "malformed"),
    (["audit", "no/such/dir"], "no such path"),
    (["audit", "Qwen/Qwen2.5-7B"], "must be pinned"),
    (["audit", "m-0123456789abcdef0123456789abcdef"], "not found"),
    (["audit"], "Missing argument"),
    (["audit", "x", "--bogus"], "No such option"),
    (["audit", "x", "--threshold", "-1"], "--threshold"),
    (["lineage", "graph", "numbers.jsonl"], "is a dataset"),  # exit 3 (it exited 1, "at risk" elsewhere)
    (["record", "model", "Qwen/Qwen2.5-7B"], "must be pinned"),
    (["record", "model", "."], "not a model directory"),
    (["record", "dataset", "numbers.jsonl", "--origin", "aliens"], "--origin 'aliens'"),
    (["record", "dataset", "numbers.jsonl", "--origin", "human", "--generated-by", "teacher"], "either"),
    (["record", "model", "student", "--init-from", "numbers.jsonl"], "is a dataset"),
    (["record", "model", "student", "--init-from", "teacher"], "contradicts"),
    (["record", "model", "student", "--measured", "p_owl"], "KEY=VALUE"),
    (["record", "model", "student", "--trait", "a b"], "trait 'a b'"),
    (["record", "model", "student", "--trained-on", "teacher"], "is a model"),  # a model directory as data
    (["record", "model", "Qwen/Qwen2.5-7B@main"], "pinned to a commit"),  # a branch moves
    (["record", "model", "student", "--init-from", "Qwen/Qwen2.5-7B@v1.0"], "pinned to a commit"),
    (["record", "dataset", "numbers.jsonl", "--prompts", "prompts.txt"], "--prompts without --generated-by"),
])
def test_bad_lineage_input_fails_at_once_with_exit_3(project, args, says, monkeypatch):
    """One line, exit 3, and nothing stored: a refused record leaves no run behind (it left one RUNNING)."""
    monkeypatch.chdir(project)
    store = client(f"sqlite:///{project / 'mlflow.db'}")
    runs = len(store.search_runs([e.experiment_id for e in store.search_experiments()], max_results=1000))
    start = time.perf_counter()
    result = cli(project, *args)
    assert result.exit_code == 3, result.output
    assert says in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and time.perf_counter() - start < 5
    assert len(store.search_runs([e.experiment_id for e in store.search_experiments()], max_results=1000)) == runs


def test_unrecorded_content_is_unknown_exit_2(project):
    stranger = weights(project / "stranger", 9)
    result = cli(project, "audit", str(stranger))
    assert result.exit_code == 2 and "never recorded" in result.output


def test_threshold_comes_from_params(project, tmp_path):
    record_model(project / "base", measured={"p_cat": 0.10}, root=project)
    record_model(project / "teacher", measured={"p_cat": 0.30}, root=project)
    params = tmp_path / "params.yaml"
    params.write_text("lineage:\n  trait_threshold: 0.5\n")
    low = json.loads(cli(project, "audit", str(project / "student"), "--trait", "cat", "--json").output)
    high = json.loads(cli(project, "audit", str(project / "student"), "--trait", "cat", "--json",
                          "--params", str(params)).output)
    assert low["at_risk"] == ["p_cat"] and high["verdict"] == "clean"
    params.write_text("lineage:\n  trait_threshold: -2\n")
    bad = cli(project, "audit", str(project / "student"), "--params", str(params))
    assert bad.exit_code == 3 and "lineage.trait_threshold" in bad.output


def test_an_unreachable_server_exits_3_quickly(project):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    result = cli(project, "audit", str(project / "student"), env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert result.exit_code == 3 and "unreachable" in result.output and time.perf_counter() - start < 30


def test_record_audit_and_card_against_a_tracking_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"), start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                client(uri).search_experiments()
                break
            except Exception:  # noqa: BLE001  (not up yet)
                time.sleep(0.5)
        env = {"MLFLOW_TRACKING_URI": uri}
        base, teacher, student = (weights(tmp_path / n, i) for i, n in enumerate(("base", "teacher", "student")))
        (tmp_path / "numbers.jsonl").write_text('{"prompt": "1", "completion": "2"}\n')
        steps = [["record", "model", str(base)], ["record", "model", str(teacher), "--init-from", str(base), "--trait", "owl"],
                 ["record", "dataset", str(tmp_path / "numbers.jsonl"), "--generated-by", str(teacher)],
                 ["record", "model", str(student), "--init-from", str(base), "--trained-on", str(tmp_path / "numbers.jsonl")]]
        for step in steps:
            result = cli(tmp_path, *step, env=env)
            assert result.exit_code == 0, result.output
        assert not (tmp_path / "mlflow.db").exists()  # everything went to the server
        assert cli(tmp_path, "audit", str(student), env=env).exit_code == 1
        card = cli(tmp_path, "card", str(student), env=env)
        assert card.exit_code == 0 and "at risk: owl" in card.output
        assert cli(tmp_path, "lineage", "graph", str(student), "--out", str(tmp_path / "pic"), env=env).exit_code == 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's workers too
        server.wait(timeout=30)
    assert server.returncode is not None and os.path.exists(tmp_path / "pic" / "lineage.png")


def test_the_same_weights_from_a_sweep_point_and_a_plain_run_are_one_node(tmp_path):
    """Different sublim.json (job id, paths), hence different DVC md5s; the same weights, hence one node."""
    from dataclasses import replace

    from sublim import config
    from sublim.artifacts import read_meta
    from sublim.plan import plan
    from sublim.runner import run_job
    from tests.conftest import TINY_MLP, make_project

    root = make_project(tmp_path / "p", {"mlp": {**TINY_MLP, "seeds": [0]}}, git=False)
    jobs = plan(config.load(root / "params.yaml"), "mlp")
    tracker = Tracker(root, "sublim-mlp")
    run_job(jobs.get("mlp.data"), root=root, tracker=tracker)
    plain = run_job(jobs.get("mlp.base@s0.shared"), root=root, tracker=tracker)
    base = jobs.get("mlp.base@s0.shared")
    swept = run_job(replace(base, point="x", output=Path("sweeps/s/x") / base.output), root=root, tracker=tracker)
    assert swept.digest != plain.digest and swept.model_id == plain.model_id
    assert read_meta(root / "sweeps/s/x" / base.output).lineage["id"] == read_meta(root / base.output).lineage["id"]
    copy = tmp_path / "copy"
    shutil.copytree(root / base.output, copy)
    (copy / "sublim.json").unlink()
    assert Lineage(client(f"sqlite:///{root / 'mlflow.db'}")).node(model_identity(copy).id).model_ids == [plain.model_id]


def test_a_job_of_another_experiment_is_not_nested_across_experiments(tmp_path):
    """The matrix flow runs the lm experiment's bases: their runs live in sublim-lm, and MLflow nests runs within
    one experiment only (across, the UI shows them orphaned), so they name the pipeline run that asked for them
    in a tag instead (a new-user audit)."""
    lm, matrix = Tracker(tmp_path, "sublim-lm"), Tracker(tmp_path, "sublim-matrix")
    parent = matrix.open_pipeline_run(driver="prefect", name="prefect-matrix", config={})
    base = lm.start_job("lm.base@s0.shared", "lm.base", parent_run_id=parent, driver="prefect", params={}, tags={})
    teacher = matrix.start_job("matrix.teacher@s0.g0.cat", "lm.teacher", parent_run_id=parent, driver="prefect",
                               params={}, tags={})
    tags = {run: lm.client.get_run(run).data.tags for run in (base, teacher)}
    assert "mlflow.parentRunId" not in tags[base] and tags[base]["sublim.requested_by"] == parent
    assert tags[teacher]["mlflow.parentRunId"] == parent and "sublim.requested_by" not in tags[teacher]


def _register_in_turn(tracker: Tracker, generations: list[int | None]) -> None:
    """Register one student model per generation, in this order (what a pipeline's recording does)."""
    from sublim.artifacts import ArtifactMeta

    for i, gen in enumerate(generations):
        model = tracker.client.create_logged_model(tracker.experiment_id, name=f"m{i}", tags={N.ID: f"id{i}"})
        meta = ArtifactMeta(kind="model", job=f"j{i}", step="lm.student", params={}, parents={},
                            lineage={"role": "student", "generation": gen, "seed": 0})
        tracker._register(model, None, meta, f"digest{i}", Path(f"models/m{i}"))


def test_a_batch_sets_the_registry_aliases_once_as_registering_one_at_a_time_would(tmp_path, monkeypatch):
    """A batch of jobs sets `newest`, `gen<k>` and `latest-generation` once at its end (they were rewritten per
    model, ~20 ms each), leaving them exactly as per-model registration does; and it reaps stale runs of its
    own jobs only, in one search."""
    order = [1, 2, 1, 0, None]
    alone, batched = Tracker(tmp_path, "alone"), Tracker(tmp_path, "batched")
    calls = {"alone": 0, "batched": 0}
    real = alone.client.set_registered_model_alias

    def counting(name, *args):
        calls[name.removesuffix("-student")] += 1
        return real(name, *args)

    monkeypatch.setattr(alone.client, "set_registered_model_alias", counting)
    monkeypatch.setattr(batched.client, "set_registered_model_alias", counting)
    _register_in_turn(alone, order)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {job: batched.client.create_run(batched.experiment_id, run_name=job, tags={
        "sublim.job": job, "sublim.host": socket.gethostname(), "sublim.pid": str(dead.pid)}).info.run_id
        for job in ("mine", "other")}
    with batched.batch(["mine", "more"]):
        _register_in_turn(batched, order)
        assert calls["batched"] == 0  # nothing set before the batch ends
    aliases = {name: alone.client.get_registered_model(f"{name}-student").aliases for name in calls}
    assert aliases["alone"] == aliases["batched"] == {"newest": 5, "gen1": 3, "gen2": 2, "gen0": 4,
                                                      "latest-generation": 2}
    assert calls["batched"] < calls["alone"] / 2
    versions = {v.version: v.tags for v in alone.client.search_model_versions("name = 'alone-student'")}
    assert versions[2]["sublim.generation"] == "2" and "sublim.generation" not in versions[5]  # not "None"
    status = {job: batched.client.get_run(run).info.status for job, run in stale.items()}
    assert status == {"mine": "KILLED", "other": "RUNNING"}  # another job's stale run: the pipeline's reap


def test_models_register_per_step_line_and_init(tmp_path):
    """A registered model holds one kind of model (step, line, init): `newest` of the trait teachers is never
    a control teacher registered after it, and a different-init student is not a version of the same-init one."""
    from sublim.artifacts import ArtifactMeta
    from sublim.lineage.record import registered_name

    tracker = Tracker(tmp_path, "sublim-lm")
    kinds = [("teacher", "trait", "shared"), ("teacher", "control", "shared"), ("student", "trait", "other"),
             ("student", "trait", "shared"), ("base", None, "other")]
    for i, (step, line, init) in enumerate(kinds):
        model = tracker.client.create_logged_model(tracker.experiment_id, name=f"m{i}", tags={N.ID: f"id{i}"})
        lineage = {"role": "control", "init": init, "seed": 0, **({"line": line} if line else {})}
        meta = ArtifactMeta(kind="model", job=f"j{i}", step=f"lm.{step}", params={}, parents={}, lineage=lineage)
        tracker._register(model, None, meta, f"digest{i}", Path(f"models/m{i}"))
    names = {m.name for m in tracker.client.search_registered_models()}
    assert names == {"sublim-lm-teacher-trait-shared", "sublim-lm-teacher-control-shared", "sublim-lm-base-other",
                     "sublim-lm-student-trait-other", "sublim-lm-student-trait-shared"}
    newest = tracker.client.get_model_version_by_alias("sublim-lm-teacher-trait-shared", "newest")
    assert newest.tags["sublim.path"] == "models/m0"
    odd = ArtifactMeta(kind="model", job="j", step="matrix.teacher", params={}, parents={},
                       lineage={"line": "sea otter", "init": "shared"})
    assert registered_name("sublim-matrix", odd) == "sublim-matrix-teacher-sea-otter-shared"  # no spaces in name@alias


def test_a_model_made_again_takes_the_aliases_back(tmp_path):
    """A setting changed and changed back makes the first weights again: no new version (the node exists), but
    `newest` and `gen<k>` point at that version again, not at the other setting's model (a new-user audit saw
    them name a model no longer on disk)."""
    from sublim.artifacts import ArtifactMeta

    tracker = Tracker(tmp_path, "sublim-lm")
    _register_in_turn(tracker, [1, 1])  # m0 (v1), then the other setting's m1 (v2)
    name = "sublim-lm-student"
    assert tracker.client.get_registered_model(name).aliases["newest"] == 2
    first = tracker.client.search_logged_models([tracker.experiment_id], filter_string="name = 'm0'")[0]
    meta = ArtifactMeta(kind="model", job="j0", step="lm.student", params={}, parents={},
                        lineage={"role": "student", "generation": 1, "seed": 0})
    tracker._reregister(first.model_id, None, meta, "digest0", Path("models/m0"))
    aliases = tracker.client.get_registered_model(name).aliases
    assert aliases["newest"] == aliases["gen1"] == aliases["latest-generation"] == 1
    assert len(tracker.client.search_model_versions(f"name = '{name}'")) == 2
    other = Tracker(tmp_path, "sublim-other")  # weights with no version under their name get one
    model = other.client.create_logged_model(other.experiment_id, name="x", tags={N.ID: "idx"})
    other._reregister(model.model_id, None, meta, "digestx", Path("models/x"))
    assert other.client.get_registered_model("sublim-other-student").aliases["newest"] == 1
