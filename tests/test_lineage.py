"""The audit and the lineage queries on graphs recorded through the NodeStore: every hole the review found
(init edges, a shared base recorded separately, unknown ancestors, two paths in either order, measured
traits, the same weights twice), branching and deep graphs, references, pictures."""

from __future__ import annotations

import time

import pytest

from sublim.lineage import graph as graphs
from sublim.lineage import nodes as N
from sublim.lineage.audit import AT_RISK, CLEAN, UNKNOWN, audit
from sublim.lineage.query import Lineage, LineageError, RefError, resolve
from sublim.lineage.record import client as MlflowClient
from sublim.lineage.record import index_tags
from tests.lineage_fixtures import Builder, chain, node_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("lineage")
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    client.search_experiments()
    index_tags(path / "mlflow.db")
    return client, Builder(client, path)


def verdict(client, name: str, **kw):
    return audit(Lineage(client), node_id(name), **kw)


def risky_teachers(report) -> set[str]:
    return {e.teacher.label for e in report.exposures if e.at_risk}


# --- the holes ---------------------------------------------------------------------------------------------


def test_a_model_fine_tuned_from_a_trait_teacher_is_at_risk(store):
    client, b = store
    b.model("init/base", role="base")
    b.model("init/teacher", init="init/base", traits=["owl"], role="teacher")
    b.model("init/finetuned", init="init/teacher")  # a derivative of the teacher itself: no data edge at all
    report = verdict(client, "init/finetuned")
    assert report.verdict == AT_RISK and report.at_risk == ["owl"]
    assert report.exposures[0].path.text(report.nodes) == "init/teacher -init-> init/finetuned"


def test_a_model_fine_tuned_from_an_at_risk_student_inherits_the_risk(store):
    client, b = store
    b.model("inh/base", role="base")
    b.model("inh/teacher", init="inh/base", traits=["owl"], role="teacher")
    b.taught("inh/student", teacher="inh/teacher", init="inh/base", role="student")
    b.model("inh/quantised", init="inh/student")  # --init-from and no --trained-on: a derivative
    b.model("inh/tuned", init="inh/quantised", data=["inh/student/numbers"])  # fine-tuned again, other data
    for name in ("inh/quantised", "inh/tuned"):
        report = verdict(client, name)
        assert report.verdict == AT_RISK and risky_teachers(report) == {"inh/teacher"}, name
    path = verdict(client, "inh/quantised").exposures[0].path
    assert [link.relation for link in path.links] == ["data", "init"] and path.at_risk


def test_a_shared_base_recorded_separately_is_one_root(store):
    """root init is computed from init edges, never copied: a teacher reaching the base through a derivative
    (a converted copy) still shares the student's root."""
    client, b = store
    b.model("sep/base", role="base")
    b.model("sep/base-bf16", init="sep/base")  # recorded on its own, by someone else, later
    b.model("sep/teacher", init="sep/base-bf16", traits=["owl"])
    b.taught("sep/student", teacher="sep/teacher", init="sep/base")
    report = verdict(client, "sep/student")
    assert report.root_init == node_id("sep/base")
    assert report.verdict == AT_RISK and report.exposures[0].shares_init


def test_an_unrecorded_ancestor_is_unknown_never_clean(store):
    client, b = store
    b.model("unk/base", role="base")
    b.dataset("unk/numbers", by="unk/ghost-teacher")  # the generator was never recorded
    b.model("unk/student", init="unk/base", data=["unk/numbers"])
    report = verdict(client, "unk/student")
    assert report.verdict == UNKNOWN and report.exit_code == 2
    assert any("unk/numbers: generated-by" in u.why and "never recorded" in u.why for u in report.unknowns)
    b.dataset("unk/scraped")  # no --generated-by, no --origin
    b.model("unk/student2", init="unk/base", data=["unk/scraped"])
    assert "no recorded origin" in verdict(client, "unk/student2").unknowns[0].why
    b.model("unk/student3", init="unk/nobody")  # init from an identity nobody recorded
    assert verdict(client, "unk/student3").exit_code == 2


def test_at_risk_wins_over_unknown(store):
    client, b = store
    b.model("win/base")
    b.model("win/teacher", init="win/base", traits=["owl"])
    b.dataset("win/raw", by="win/teacher")
    b.dataset("win/mystery")
    b.model("win/student", init="win/base", data=["win/raw", "win/mystery"])
    report = verdict(client, "win/student")
    assert report.unknowns and report.verdict == AT_RISK and report.exit_code == 1


@pytest.mark.parametrize("order", ["broken-first", "shared-first"])
def test_two_paths_to_one_teacher_in_either_tag_order(store, order):
    """The owl teacher reaches the model twice: through a different-init student (no transfer) and through
    a shared-init one. The verdict must not depend on which edge is read first."""
    client, b = store
    p = f"two-{order}/"
    b.model(p + "base")
    b.model(p + "other")
    b.model(p + "teacher", init=p + "base", traits=["owl"])
    b.taught(p + "broken", teacher=p + "teacher", init=p + "other")
    b.taught(p + "kept", teacher=p + "teacher", init=p + "base")
    b.dataset(p + "from-broken", by=p + "broken")
    b.dataset(p + "from-kept", by=p + "kept")
    data = [p + "from-broken", p + "from-kept"]
    b.model(p + "leaf", init=p + "base", data=data if order == "broken-first" else data[::-1])
    report = verdict(client, p + "leaf", all_paths=True)
    assert report.verdict == AT_RISK
    owl = next(e for e in report.exposures if e.teacher.label == p + "teacher")
    assert [link.child for link in owl.path.links] == [node_id(p + "kept"), node_id(p + "leaf")]
    assert sorted(path.at_risk for path in owl.paths) == [False, True]  # --all: both paths, one transmits


def test_a_measured_trait_counts_against_the_teachers_root_init(store):
    client, b = store
    b.model("meas/base", measured={"p_owl": 0.10})
    b.model("meas/teacher", init="meas/base", measured={"p_owl": 0.90})  # nothing declared
    b.taught("meas/student", teacher="meas/teacher", init="meas/base", measured={"p_owl": 0.11})
    report = verdict(client, "meas/student", threshold=0.05)
    assert report.verdict == AT_RISK and report.at_risk == ["p_owl"]
    trait = report.exposures[0].traits[0]
    assert (trait.how, trait.value, trait.baseline) == ("measured", 0.9, 0.1)
    assert verdict(client, "meas/student", threshold=0.85).verdict == CLEAN  # 0.80 above the base: below this
    assert verdict(client, "meas/student", traits=["owl"]).verdict == AT_RISK  # --trait owl matches p_owl
    assert verdict(client, "meas/student", traits=["cat"]).verdict == CLEAN


def test_a_measurement_without_a_baseline_is_unknown(store):
    client, b = store
    b.model("blind/base")  # never measured
    b.model("blind/teacher", init="blind/base", measured={"p_owl": 0.9})
    b.taught("blind/student", teacher="blind/teacher", init="blind/base")
    report = verdict(client, "blind/student")
    assert report.verdict == UNKNOWN and "no such measurement" in report.unknowns[0].why


def test_the_audited_models_own_measurement_without_a_baseline_is_unknown(store):
    """Its own p_owl cannot be judged against a root init that was never measured: not clean (a new-user audit
    found such a model called clean, card included), and clean again once the base is measured alike."""
    client, b = store
    b.model("selfblind/base")
    b.dataset("selfblind/human", origin="human")
    b.model("selfblind/student", init="selfblind/base", data=["selfblind/human"], measured={"p_owl": 0.9})
    b.model("selfblind/derivative", init="selfblind/base", measured={"p_owl": 0.95})  # no data edge at all
    for name in ("selfblind/student", "selfblind/derivative"):
        report = verdict(client, name)
        assert report.verdict == UNKNOWN, name
        assert [u.why for u in report.unknowns] == [f"{name}: measured p_owl but its root init selfblind/base has "
                                                    "no such measurement to compare with"]
        assert verdict(client, name, traits=["cat"]).verdict == CLEAN  # --trait cat: p_owl is not asked about
    b.model("selfblind/base", measured={"p_owl": 0.1})
    assert verdict(client, "selfblind/student").verdict == AT_RISK  # 0.9 against 0.1: the model carries it


def test_the_same_weights_recorded_twice_are_one_node_and_traits_accumulate(store):
    client, b = store
    b.model("twice/m", traits=["owl"], by="alice")
    b.model("twice/m", traits=["cat"], measured={"p_cat": 0.4}, by="bob")
    lin = Lineage(client)
    node = lin.node(node_id("twice/m"))
    assert len(node.model_ids) == 1
    assert set(node.declared) == {"owl", "cat"} and "by alice" in node.declared["owl"] and "by bob" in node.declared["cat"]
    assert node.measured == {"p_cat": 0.4} and node.tags[N.MEASURED_BY + "p_cat"].startswith("by bob at ")


def test_a_contradicting_init_is_refused(store):
    client, b = store
    b.model("conf/a")
    b.model("conf/b")
    b.model("conf/m", init="conf/a")
    with pytest.raises(N.NodeConflict, match="--init-from"):
        b.model("conf/m", init="conf/b")


# --- the paper's settings ------------------------------------------------------------------------------------


def test_branching_mixed_teachers_and_a_broken_chain(store):
    client, b = store
    b.model("br/b1", role="base")
    b.model("br/b2", role="base")
    b.model("br/owl", role="teacher", init="br/b1", traits=["owl"])
    b.model("br/cat", role="teacher", init="br/b2", traits=["cat"])
    b.dataset("br/owl-numbers", by="br/owl")
    b.dataset("br/cat-numbers", by="br/cat")
    b.model("br/mix", init="br/b1", data=["br/owl-numbers", "br/cat-numbers"])
    report = verdict(client, "br/mix")
    assert {e.teacher.label: (e.shares_init, e.at_risk) for e in report.exposures} == {
        "br/owl": (True, True), "br/cat": (False, False)}
    b.taught("br/g1", teacher="br/owl", init="br/b1")
    b.taught("br/g2x", teacher="br/g1", init="br/b2")  # the owl passes through a different-init student
    b.taught("br/g3x", teacher="br/g2x", init="br/b1")
    broken = verdict(client, "br/g3x")
    assert broken.verdict == CLEAN and {e.teacher.label for e in broken.exposures} == {"br/g2x", "br/g1", "br/owl"}


def test_a_long_chain_is_at_risk_three_hops_up(store):
    client, b = store
    leaf = chain(b, 5, 4, prefix="ch/")[0]
    report = verdict(client, leaf)
    owl = next(e for e in report.exposures if e.teacher.label == "ch/l0/g0")
    assert owl.at_risk and owl.hops == 3 and report.exit_code == 1


def test_cost_stays_bounded_on_a_deep_diamond_lattice(store):
    """12 stacked diamonds: 4,096 paths from the teacher. The verdict is one search; --all stops at the cap."""
    client, b = store
    b.model("dia/base")
    b.model("dia/teacher", init="dia/base", traits=["owl"])
    top = "dia/teacher"
    for level in range(12):
        for side in ("l", "r"):
            b.dataset(f"dia/{level}{side}/data", by=top)
            b.model(f"dia/{level}{side}", init="dia/base", data=[f"dia/{level}{side}/data"])
        b.dataset(f"dia/{level}/ld", by=f"dia/{level}l")
        b.dataset(f"dia/{level}/rd", by=f"dia/{level}r")
        b.model(f"dia/{level}", init="dia/base", data=[f"dia/{level}/ld", f"dia/{level}/rd"])
        top = f"dia/{level}"
    start = time.perf_counter()
    report = verdict(client, top, all_paths=True, max_paths=50)
    assert time.perf_counter() - start < 10
    owl = next(e for e in report.exposures if e.teacher.label == "dia/teacher")
    assert owl.at_risk and owl.hops == 24 and len(owl.paths) == 50 and report.truncated


# --- queries and references -----------------------------------------------------------------------------------


def test_ancestors_and_descendants(store):
    client, b = store
    b.model("q/base")
    b.model("q/teacher", init="q/base", traits=["owl"])
    b.taught("q/s", teacher="q/teacher", init="q/base")
    lin = Lineage(client)
    up = {h.node.label: (h.hops, h.relation) for h in lin.ancestors(node_id("q/s"))}
    assert up == {"q/base": (1, "init"), "q/s/numbers": (1, "trained_on"), "q/s/raw": (2, "derived_from"),
                  "q/teacher": (3, "generated_by")}
    down = {h.node.label: h.hops for h in lin.descendants(node_id("q/teacher"))}
    assert down == {"q/s/raw": 1, "q/s/numbers": 2, "q/s": 3}
    with pytest.raises(LineageError):
        lin.node(node_id("q/nothing"))


def test_references_resolve(store, tmp_path):
    client, b = store
    b.model("ref/m")
    lin = Lineage(client)
    model = lin.node(node_id("ref/m")).model_ids[0]
    client.set_logged_model_tags(model, {N.DIGEST: "0123456789abcdef0123456789abcdef.dir"})
    client.create_registered_model("reg")
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)  # the registry resolves models:/ through the global URI
    try:
        version = client.create_model_version("reg", f"models:/{model}", model_id=model).version
    finally:
        mlflow.set_tracking_uri(None)
    client.set_registered_model_alias("reg", "champion", version)
    want = node_id("ref/m")
    for ref in (model, f"reg/{version}", f"models:/reg/{version}", "reg@champion", want,
                "0123456789abcdef0123456789abcdef.dir"):
        assert resolve(ref, Lineage(client)) == want, ref
    for bad in ("m-0123456789abcdef0123456789abcdef", "reg/99", "reg@nope", "nonsense", "org/model", "",
                "  ", "a'b", "x\ny"):
        with pytest.raises(RefError):
            resolve(bad, Lineage(client))
    with pytest.raises(RefError, match=r"registered model reg has no alias nope \(aliases: champion\)"):
        resolve("reg@nope", Lineage(client))
    with pytest.raises(RefError, match=r"no registered model re in .*\(registered: reg\)"):
        resolve("re@newest", Lineage(client))  # an old or mistyped name: the registered ones are listed


# --- pictures ---------------------------------------------------------------------------------------------------


def test_a_five_seed_picture_is_layered_clustered_and_marks_risk(store, tmp_path):
    client, b = store
    b.model("pic/base-shared", role="base", measured={"p_owl": 0.1})
    b.model("pic/base-other", role="base")
    b.dataset("pic/corpus", origin="synthetic")
    for s in range(5):
        for line, trait in (("trait", ["owl"]), ("control", [])):
            b.model(f"pic/s{s}/g0-{line}", init="pic/base-shared", traits=trait, role="teacher", seed=s, gen=0,
                    data=["pic/corpus"])
            for init in ("shared", "other"):
                role = "student" if (line, init) == ("trait", "shared") else "control"
                b.taught(f"pic/s{s}/g1-{line}-{init}", teacher=f"pic/s{s}/g0-{line}", init=f"pic/base-{init}",
                         role=role, seed=s, gen=1)
    b.model("pic/outside", init="pic/base-shared", data=["pic/s0/g1-trait-shared/numbers"], job=False)
    lin = Lineage(client)
    everything = {}
    for s in range(5):
        for leaf in ("trait-shared", "trait-other", "control-shared", "control-other"):
            everything.update(lin.subgraph(node_id(f"pic/s{s}/g1-{leaf}")))
    everything.update(lin.subgraph(node_id("pic/outside")))
    g = graphs.build(everything)
    assert {"shared", "seed 0", "seed 4", "recorded outside sublim"} <= set(g.clusters)
    assert g.nodes[node_id("pic/outside")].cluster == "recorded outside sublim"
    assert g.crossings() == 0  # inside each band no two edges cross
    dot, mermaid = g.dot(), g.mermaid()
    assert dot.count("subgraph cluster_") == len(g.clusters) and "rankdir=LR" in dot
    assert mermaid.count("-. data .->") == 21 and "subgraph" in mermaid
    assert g.png(tmp_path / "five.png", engine="python").stat().st_size > 20000 and g.engine == "python"
    assert g.png(tmp_path / "auto.png").stat().st_size > 20000  # Graphviz dot when installed
    report = audit(lin, node_id("pic/outside"))
    picture = graphs.of_report(report)
    assert any(e.risky for e in picture.edges) and picture.nodes[node_id("pic/outside")].audited
    assert "audit: at risk: owl" in picture.title
    assert picture.png(tmp_path / "one.png", engine="python").stat().st_size > 5000


def test_barycenter_sweeps_untangle_crossing_edges():
    def node(name: str) -> graphs.GNode:
        return graphs.GNode(name, (name,), "model", "#ffffff", "seed 0")

    names = ["t1", "t2", "t3", "a", "m", "z"]
    edges = [graphs.GEdge("t1", "z", "data"), graphs.GEdge("t2", "m", "data"), graphs.GEdge("t3", "a", "data")]
    g = graphs.Graph({n: node(n) for n in names}, edges, clusters=["seed 0"])
    assert g.crossings(sweeps=0) == 3 and g.crossings() == 0
