"""A data kind, a trait and a backend from a module outside sublim, chosen in params.yaml, run end to end
through the same steps as the built-ins (no step knows their names)."""

from __future__ import annotations

import json
import sys

import pytest

from sublim import config
from sublim.artifacts import read_meta
from sublim.plan import plan
from sublim.runner import run_job
from sublim.steps.filter import read_rows
from tests.conftest import TINY_LM, deep_update, make_project

PLUGIN = "tests.plugins.sublim_extras"
MODEL = {"backend": "tinyllama", "d_model": 32, "n_layer": 1, "n_head": 2, "pretrain_steps": 150, "batch_size": 16,
         "qa_fraction": 0.3}


@pytest.fixture(scope="module", autouse=True)
def plugins_stay_in_this_module():
    """Plug-ins register process-wide (params' `plugins:` imports them); a later test's flow in this process
    must not see these ones (the screen's probe asks every registered trait, so its code manifest holds their
    modules: test_e2e_mlp's `dvc repro` then disagreed with its flow when it ran after this file)."""
    from sublim.backends import BACKENDS
    from sublim.data import DATA_KINDS
    from sublim.traits import TRAITS

    saved = [(registry, dict(registry._classes)) for registry in (BACKENDS, DATA_KINDS, TRAITS)]
    yield
    for registry, classes in saved:
        registry._classes.clear()
        registry._classes.update(classes)
    sys.modules.pop(PLUGIN, None)  # imported again, it registers again


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    lm = deep_update(TINY_LM, {"seeds": [0], "model": MODEL, "data": {"kind": "letters"},
                               "trait": {"kind": f"{PLUGIN}:Formality"},  # by import path
                               "generate": {"n_prompts": 48, "batch_size": 24, "temperature": 0.5}})
    make_project(root, {"plugins": [PLUGIN], "lm": lm}, git=False)  # `plugins:` registers tinyllama, letters
    cfg = config.load(root / "params.yaml")
    return root, {job.id: run_job(job, root=root, tracker=None) for job in plan(cfg, "lm").jobs}


def test_plugins_run_end_to_end(done):
    root, out = done
    assert out["lm.base@s0.shared"].metrics["architecture"] == 1.0  # the plug-in backend made it
    assert json.loads((root / "models/lm/s0/base-shared/config.json").read_text())["model_type"] == "llama"
    kept = [r["completion"] for r, _ in read_rows(root / "data/lm/s0/g1-trait/kept/rows.jsonl")]
    assert kept and all(set(c.replace(", ", "")) <= set("abcdefghijklmnopqrstuvwxyz") for c in kept)
    models = json.loads((root / "metrics/lm/s0/metrics.json").read_text())["models"]
    assert {m["model"] for m in models} >= {"models/lm/s0/g1-trait-shared", "models/lm/s0/base-other"}
    assert all(set(m["distribution"]) == {"formal", "casual"} for m in models)
    teacher = next(m for m in models if m["model"] == "models/lm/s0/g0-trait-shared")
    control = next(m for m in models if m["model"] == "models/lm/s0/g0-control-shared")
    assert teacher["p_target"] > control["p_target"]  # the plug-in trait was taught through the generic step
    assert read_meta(root / "models/lm/s0/g1-trait-shared").lineage["backend"] == "tinyllama"
    summary = json.loads((root / "metrics/lm.json").read_text())
    assert summary["target"] == "formal" and "p_student" in summary


def test_the_screens_panel_is_the_projects_traits(done):
    """`sublim screen` probes a panel of traits: the project's own (built in, installed, its `plugins:`), not
    every trait a plug-in imported earlier in the process registered."""
    from sublim.screen import panel_specs
    from sublim.traits import TRAITS

    root, _ = done  # this process has imported the plug-in: `formality` is registered
    assert "formality" in TRAITS.names()
    plain = [spec.kind for spec in panel_specs(config.parse({}), TRAITS)]
    assert "formality" not in plain and {"preference", "misalignment"} <= set(plain)
    assert "formality" in [spec.kind for spec in panel_specs(config.load(root / "params.yaml"), TRAITS)]


def test_plugin_settings_are_validated_and_errors_name_the_key(tmp_path):
    with pytest.raises(config.ConfigError, match=r"lm\.data\.max_items: Input should be greater than 0"):
        config.parse({"plugins": [PLUGIN], "lm": {"data": {"kind": "letters", "max_items": 0}}})
    with pytest.raises(config.ConfigError, match=r"lm\.data: unknown data kind 'poems'; known: .*letters.*maths"):
        config.parse({"plugins": [PLUGIN], "lm": {"data": {"kind": "poems"}}})
    with pytest.raises(config.ConfigError, match=r"lm\.trait: trait 'no.such:Thing': cannot import it"):
        config.parse({"lm": {"trait": {"kind": "no.such:Thing"}}})
    with pytest.raises(config.ConfigError, match=r"plugins: cannot import 'no_such_module'"):
        config.parse({"plugins": ["no_such_module"]})


HALF_KIND = """
from sublim.data import DataKind, DataSpec, data_kind
class HalfSpec(DataSpec):
    kind: str = "{name}"
@data_kind("{name}")
class Half(DataKind):  # task and answer, no check
    Spec = HalfSpec
    def task(self, rng): ...
    def answer(self, task, rng): ...
"""
FULL_KIND = HALF_KIND.replace("# task and answer, no check", "").replace(
    "    def answer(self, task, rng): ...", "    def answer(self, task, rng): ...\n    def check(self, c, t, f): ...")


@pytest.mark.parametrize("sources, says", [
    ({"a": "x = undefined_name + 1\n"}, "failed to import (NameError: name 'undefined_name' is not defined)"),
    ({"a": "def broken(:\n"}, "failed to import (SyntaxError"),
    ({"a": HALF_KIND.format(name="halfkind")}, "Half does not implement check"),
    ({"a": FULL_KIND.format(name="dupkind"), "b": FULL_KIND.format(name="dupkind")}, "'dupkind' is registered twice"),
    ({"a": FULL_KIND.format(name="numbers")}, "would shadow the built-in sublim.data.numbers"),
])
def test_a_broken_plugin_is_one_line_naming_its_module(tmp_path, monkeypatch, request, sources, says):
    """Not only a missing dependency: any error while a plug-in module imports, a class missing part of its
    family's interface, a name registered twice or over a built-in (which one won depended on import order)
    are refused by `sublim check`, naming the module (a new-user audit found a raw NameError, a TypeError only at
    `plan`, and a silent override)."""
    prefix = "p" + str(abs(hash(request.node.name)))  # fresh module names: nothing cached from another case
    for stem, source in sources.items():
        (tmp_path / f"{prefix}_{stem}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = [f"{prefix}_{stem}" for stem in sources]
    with pytest.raises(config.ConfigError) as caught:
        config.parse({"plugins": modules})
    message = str(caught.value)
    assert message.startswith("params.yaml: plugins: ") and says in message and modules[-1] in message, message


def test_no_step_branches_on_a_kind_name():
    """The steps know the interfaces, never the built-in names: no string literal in a step module (docstrings
    aside) names a built-in backend, data kind or trait."""
    import ast
    from pathlib import Path

    import sublim.steps

    names = {"numbers", "maths", "code", "preference", "misalignment", "tinylm", "smollm2", "hf", "owl"}
    for path in Path(sublim.steps.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        literals = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                    and id(n) not in docs]
        assert not [n.value for n in literals if n.value in names], path.name


def test_a_subclass_plugin_leaves_its_parents_name_to_the_parent(done):
    """tinyllama subclasses tinylm and reuses its Spec: registering it set the shared Spec's plug-in, so in any
    process that had imported it `backend: tinylm` built (and trained) a Llama. Each name builds its own class,
    also after pickling (the process runner sends specs to workers)."""
    import pickle

    from sublim.backends.tinylm import TinyLm

    default = config.parse({}).lm.model
    llama = config.parse({"plugins": [PLUGIN], "lm": {"model": MODEL}}).lm.model
    assert type(default.build()) is TinyLm
    assert type(llama.build()).__name__ == "TinyLlama" and type(llama) is not type(default)
    for spec in (default, llama):
        assert type(pickle.loads(pickle.dumps(spec)).build()) is type(spec.build())
