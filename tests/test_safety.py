"""Safety of loading: no pickle anywhere on the load path, weights only as safetensors, task results as JSON,
remote code off unless asked, and no artifact path (from a job or a sweep name) escaping the project."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sublim import config, sweep
from sublim.job import Job
from sublim.config import NoParams
from sublim.runner import run_job
from tests.conftest import REPO

SOURCES = sorted((REPO / "sublim").rglob("*.py")) + sorted((REPO / "flows").rglob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_no_pickle_and_torch_load_only_with_weights_only():
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib") for n in names), path
        for call in _calls(tree):
            fn = ast.unparse(call.func)
            kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if fn.endswith("torch.load"):
                assert kw.get("weights_only") == "True", f"{path}:{call.lineno}"
            assert kw.get("trust_remote_code") != "True", f"{path}:{call.lineno}"  # only ever from params
            if fn == "AutoModelForCausalLM.from_pretrained" and "gguf_file" not in kw:
                assert kw.get("use_safetensors") == "True", f"{path}:{call.lineno}"  # never a pickled .bin


def test_remote_code_is_off_unless_params_say_so(tmp_path):
    for model in ({"backend": "tinylm"}, {"backend": "smollm2"}, {"backend": "hf", "model": "org/name"}):
        spec = config.parse({"lm": {"model": model, "student_inits": ["shared"]}}).lm.model
        assert spec.build().options().trust_remote_code is False
    spec = config.parse({"lm": {"model": {"backend": "hf", "model": "org/name", "trust_remote_code": True},
                                "student_inits": ["shared"]}}).lm.model
    assert spec.build().options().trust_remote_code is True


def test_task_results_are_stored_as_json():
    from sublim.orchestrate import result_storage

    assert result_storage(Path("."))["result_serializer"] == "json"


@pytest.mark.parametrize("output", ["../escaped", "/tmp/sublim-escaped", "models/../../escaped"])
def test_a_job_cannot_write_outside_the_project(tmp_path, output):
    root = tmp_path / "proj"
    root.mkdir()
    job = Job("mlp", "data", NoParams(), Path(output))
    with pytest.raises(ValueError, match="escapes the project"):
        run_job(job, root=root, tracker=None)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/sublim-escaped").exists()


def test_a_job_cannot_read_outside_the_project(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    job = Job("mlp", "teacher", NoParams(), Path("models/x"), (("init", Path("../secret")),))
    with pytest.raises(ValueError, match="escapes the project"):
        run_job(job, root=root, tracker=None)


@pytest.mark.parametrize("name", ["../up", "/abs", "a/b", ""])
def test_sweep_names_cannot_escape(name):
    with pytest.raises(config.ConfigError, match="sweep name"):
        sweep.build(name, "lm", {}, {"lm.trait.target": ["owl"]})
