"""Lineage queries on graphs built directly in MLflow: branching, mixed data, chains, references, audit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sublim.lineage.record import client as MlflowClient
from typer.testing import CliRunner

from sublim.cli import app
from sublim.lineage import graph as graphs
from sublim.lineage.query import DATA, INIT, Lineage, LineageError, audit, resolve
from tests.lineage_fixtures import chain, digest_of, record


@pytest.fixture
def store(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_experiment("lineage", artifact_location=(tmp_path / "artifacts").as_uri())


def test_branching_one_teacher_several_students(store):
    client, exp = store
    record(client, exp, "base", role="base")
    record(client, exp, "other", role="base")
    record(client, exp, "teacher", role="teacher", init="base", trait="owl", gen=0)
    for i in range(3):
        record(client, exp, f"s{i}", role="student", init="base", data_from=["teacher"], gen=1)
    record(client, exp, "x", role="control", init="other", data_from=["teacher"], gen=1)
    lin = Lineage(client)
    down = {h.node.label: (h.hops, h.relation) for h in lin.descendants(digest_of("teacher"))}
    assert down == {"s0": (1, DATA), "s1": (1, DATA), "s2": (1, DATA), "x": (1, DATA)}
    base_down = {h.node.label: h.hops for h in lin.descendants(digest_of("base"))}
    assert base_down == {"teacher": 1, "s0": 1, "s1": 1, "s2": 1, "x": 2}  # x: only through the teacher's data
    up = {h.node.label: (h.hops, h.relation) for h in lin.ancestors(digest_of("s1"))}
    assert up == {"base": (1, INIT), "teacher": (1, DATA)}


def test_student_on_a_mix_of_two_teachers(store):
    client, exp = store
    record(client, exp, "b1", role="base")
    record(client, exp, "b2", role="base")
    record(client, exp, "owl-teacher", role="teacher", init="b1", trait="owl", gen=0)
    record(client, exp, "cat-teacher", role="teacher", init="b2", trait="cat", gen=0)
    record(client, exp, "mix", role="student", init="b1", data_from=["owl-teacher", "cat-teacher"],
           data=["numbers-owl", "numbers-cat"], gen=1)
    lin = Lineage(client)
    up = lin.ancestors(digest_of("mix"))
    assert {h.node.label for h in up} == {"b1", "b2", "owl-teacher", "cat-teacher"}
    data_hop = next(h for h in up if h.node.label == "cat-teacher")
    assert set(data_hop.data) == {digest_of("numbers-owl"), digest_of("numbers-cat")}
    node, exposures = audit(lin, digest_of("mix"))
    risk = {e.teacher.label: (e.shares_init, e.at_risk) for e in exposures}
    assert risk == {"owl-teacher": (True, True), "cat-teacher": (False, False)}
    # the dataset digest leads to the student too
    assert {h.node.label for h in lin.descendants(digest_of("numbers-cat"))} == {"mix"}


def test_chain_hops_and_a_broken_chain(store):
    client, exp = store
    record(client, exp, "base", role="base")
    record(client, exp, "other", role="base")
    record(client, exp, "g0", role="teacher", init="base", trait="owl", gen=0)
    record(client, exp, "g1", role="student", init="base", data_from=["g0"], gen=1)
    record(client, exp, "g2", role="student", init="base", data_from=["g1"], gen=2)
    record(client, exp, "g3", role="student", init="base", data_from=["g2"], gen=3)
    record(client, exp, "g2x", role="control", init="other", data_from=["g1"], gen=2, root_init=digest_of("other"))
    record(client, exp, "g3x", role="student", init="base", data_from=["g2x"], gen=3)
    lin = Lineage(client)
    _, exposures = audit(lin, digest_of("g3"))
    assert [(e.teacher.label, e.hops, e.at_risk) for e in exposures] == [("g2", 1, False), ("g1", 2, False),
                                                                         ("g0", 3, True)]
    _, broken = audit(lin, digest_of("g3x"))  # the owl passed through a different-init student on the way
    assert {e.teacher.label: (e.shares_init, e.chain_shares_init, e.at_risk) for e in broken} == {
        "g2x": (False, False, False), "g1": (True, False, False), "g0": (True, False, False)}
    _, only_cat = audit(lin, digest_of("g3"), traits=["cat"])
    assert not any(e.at_risk for e in only_cat)


def test_references_resolve(store, tmp_path):
    client, exp = store
    d = record(client, exp, "m", role="student")
    model = client.search_logged_models([exp])[0]
    client.create_registered_model("reg")
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)  # the registry resolves models:/ through the global URI
    try:
        version = client.create_model_version("reg", f"models:/{model.model_id}", model_id=model.model_id).version
    finally:
        mlflow.set_tracking_uri(None)
    client.set_registered_model_alias("reg", "champion", version)
    assert resolve(model.model_id, client) == d
    assert resolve(f"reg/{version}", client) == d
    assert resolve(f"models:/reg/{version}", client) == d
    assert resolve("reg@champion", client) == d
    assert resolve(d, client) == d
    art = tmp_path / "art"
    art.mkdir()
    (art / "w.bin").write_bytes(b"x")
    from sublim.artifacts import digest

    assert resolve(str(art), client) == digest(art)
    for bad in ("m-doesnotexist", "reg/99", "reg@nope", "nonsense"):
        with pytest.raises(LineageError):
            resolve(bad, client)


def test_graph_text_and_picture(store, tmp_path):
    client, exp = store
    leaf = chain(client, exp, 12, 4)[0]
    lin = Lineage(client)
    g = graphs.around(lin, digest_of(leaf))
    assert len(g.nodes) == 5 and len(g.edges) == 3 + 4  # 3 data edges g0->g1->g2->g3, 4 init edges from base
    mermaid, dot = g.mermaid(), g.dot()
    assert mermaid.startswith("graph LR") and mermaid.count("-. data .->") == 3
    assert dot.count("->") == 7 and "style=dashed" in dot
    assert g.png(tmp_path / "g.png").stat().st_size > 5000


def test_cli_audit_exit_codes_and_graph(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment("sublim-lm", artifact_location=(tmp_path / "artifacts").as_uri())
    leaf = chain(client, exp, 8, 3)[0]
    record(client, exp, "clean-base", role="base")
    record(client, exp, "clean", role="student", init="clean-base", data_from=["clean-base"], gen=1)
    runner = CliRunner()
    flagged = runner.invoke(app, ["audit", digest_of(leaf), "--json"])
    assert flagged.exit_code == 1, flagged.output
    report = json.loads(flagged.output)
    assert report["at_risk"] == ["owl"] and [e["hops"] for e in report["exposures"]] == [1, 2]
    assert runner.invoke(app, ["audit", digest_of("clean")]).exit_code == 0
    assert runner.invoke(app, ["audit", "m-missing"]).exit_code == 2
    out = tmp_path / "pics"
    result = runner.invoke(app, ["lineage", "graph", "sublim-lm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"lineage.mmd", "lineage.dot", "lineage.png"}
    graph_runs = client.search_runs([exp], filter_string="tags.`sublim.kind` = 'lineage-graph'")
    assert len(graph_runs) == 1
    anc = json.loads(runner.invoke(app, ["lineage", "ancestors", digest_of(leaf), "--json"]).output)
    assert {a["path"] for a in anc["ancestors"]} == {"l0/base", "l0/g0", "l0/g1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_queries_against_a_running_tracking_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"))
    try:
        uri = f"http://127.0.0.1:{port}"
        client = MlflowClient(uri)
        for _ in range(120):
            try:
                client.search_experiments()
                break
            except Exception:  # noqa: BLE001  (not up yet)
                time.sleep(0.5)
        exp = client.create_experiment("server-lineage")
        leaf = chain(client, exp, 4, 3)[0]
        lin = Lineage(client)
        assert [h.node.label for h in lin.ancestors(digest_of(leaf))] == ["l0/base", "l0/g1", "l0/g0"]
        _, exposures = audit(lin, digest_of(leaf))
        assert [e.teacher.label for e in exposures if e.at_risk] == ["l0/g0"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None



def test_registering_leaves_the_process_tracking_uri_alone(tmp_path, monkeypatch):
    """MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI; registering a model must not leak it."""
    import os

    from sublim.lineage.record import _global_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with _global_tracking_uri(f"sqlite:///{tmp_path / 'a.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("a.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    with _global_tracking_uri(f"sqlite:///{tmp_path / 'a.db'}"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://server:5000"
