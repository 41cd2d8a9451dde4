"""params.yaml validation: every bad value is refused before compute, with the offending key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from sublim import config


def test_defaults_are_valid_and_match_params_file():
    cfg = config.load(Path(__file__).resolve().parents[1] / "params.yaml")
    assert cfg.mlp.model.aux_logits == 3
    assert cfg.mlp.seeds == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"mlp": {"modle": {}}}, "mlp.modle"),
        ({"bogus": 1}, "bogus"),
        ({"mlp": {"model": {"aux_logits": 0}}}, "mlp.model.aux_logits"),
        ({"mlp": {"model": {"hidden": [256, -1]}}}, "mlp.model.hidden.1"),
        ({"mlp": {"model": {"hidden": []}}}, "mlp.model.hidden"),
        ({"mlp": {"teacher": {"epochs": -5}}}, "mlp.teacher.epochs"),
        ({"mlp": {"teacher": {"lr": 0}}}, "mlp.teacher.lr"),
        ({"mlp": {"student": {"epochs": "many"}}}, "mlp.student.epochs"),
        ({"mlp": {"student": {"loss": "l1"}}}, "mlp.student.loss"),
        ({"mlp": {"transfer": {"n_inputs": 0}}}, "mlp.transfer.n_inputs"),
        ({"mlp": {"transfer": {"low": 1, "high": -1}}}, "mlp.transfer"),
        ({"mlp": {"seeds": []}}, "mlp.seeds"),
        ({"mlp": {"seeds": [1, 1]}}, "mlp.seeds"),
        ({"mlp": {"seeds": [-1]}}, "mlp.seeds.0"),
        ({"mlp": {"data": {"source": "mnist"}}}, "mlp.data"),
        ({"mlp": {"data": {"source": "mnist", "mnist_dir": "/no/such/dir"}}}, "mlp.data"),
        ({"mlp": {"data": {"test_fraction": 1.5}}}, "mlp.data.test_fraction"),
        ({"mlp": {"student_inits": ["other"]}}, "mlp.student_inits"),
        ({"mlp": {"generations": [{"gen": 1, "teacher": 1}]}}, "mlp.generations.0"),
        ({"mlp": {"generations": [{"gen": 2, "teacher": 1}]}}, "mlp.generations"),
        ({"mlp": {"generations": [{"gen": 1, "teacher": 0, "student": {"stepz": 3}}]}}, "generations.0.student.stepz"),
        ({"runtime": {"threads": 0}}, "runtime.threads"),
        ({"runtime": {"task_runner": "celery"}}, "runtime.task_runner"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(config.ConfigError) as err:
        config.parse(data)
    assert f"{key}:" in str(err.value) or f"{key} " in str(err.value), str(err.value)


def test_missing_and_unparsable_files_are_named(tmp_path):
    with pytest.raises(config.ConfigError, match="nope.yaml: params file not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mlp: [unclosed")
    with pytest.raises(config.ConfigError, match="bad.yaml: not valid YAML"):
        config.load(bad)
    bad.write_text("- a list")
    with pytest.raises(config.ConfigError, match="expected a mapping"):
        config.load(bad)


def test_mnist_dir_needs_idx_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(config.ConfigError, match="lacks train-labels-idx1-ubyte"):
        config.parse({"mlp": {"data": {"source": "mnist", "mnist_dir": str(tmp_path)}}})


def test_generation_overrides_merge_onto_the_section():
    cfg = config.parse({"mlp": {"student": {"lr": 0.01}, "generations": [
        {"gen": 1, "teacher": 0}, {"gen": 2, "teacher": 1, "student": {"epochs": 7}}]}})
    assert cfg.mlp.student_for(1).epochs == 5
    assert cfg.mlp.student_for(2).epochs == 7
    assert cfg.mlp.student_for(2).lr == 0.01  # not reset to the default


def test_digest_changes_with_any_value():
    assert config.parse({}).digest() == config.parse({}).digest()
    assert config.parse({}).digest() != config.parse({"mlp": {"seeds": [0]}}).digest()


@pytest.mark.parametrize("preset", sorted((Path(__file__).resolve().parents[1] / "presets").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_presets_are_valid_params_files(preset):
    from sublim.plan import plan

    cfg = config.load(preset)
    jobs = plan(cfg, "lm").jobs
    assert cfg.lm.model.trust_remote_code is False and len(jobs) > 0


def test_check_warns_of_pipelines_these_params_cannot_plan(tmp_path):
    """dvc.yaml holds every pipeline's stages: `sublim check` says which one these params break (a new-user audit
    found lm.seeds [0, 1] passing check, then a bare `dvc repro` failing at the matrix's teachers)."""
    import yaml
    from typer.testing import CliRunner

    from sublim.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"lm": {"seeds": [0, 1]}}))
    result = CliRunner().invoke(app, ["check", "-p", str(params)])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "ok" in said
    assert "warning matrix: matrix.seeds: [2, 3, 4] not among lm.seeds [0, 1]" in said
    params.write_text(yaml.safe_dump({"lm": {"seeds": [0, 1]}, "matrix": {"seeds": [0, 1]}}))
    assert "warning" not in CliRunner().invoke(app, ["check", "-p", str(params)]).output


def test_a_params_file_is_validated_once_per_content(tmp_path):
    """Every task of a flow loads the flow's params: the same bytes give the same frozen Config; an edit is read."""
    path = tmp_path / "params.yaml"
    path.write_text("mlp:\n  seeds: [0, 1]\n")
    first = config.load(path)
    assert config.load(path) is first
    path.write_text("mlp:\n  seeds: [0, 1, 2]\n")
    assert config.load(path).mlp.seeds == [0, 1, 2]
    path.write_text("mlp:\n  seeds: [0, 1]\n  nope: 1\n")
    with pytest.raises(config.ConfigError, match="nope"):
        config.load(path)
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")


def test_a_repeated_seed_is_named_once(tmp_path):
    from sublim import config

    path = tmp_path / "params.yaml"
    path.write_text("mlp:\n  seeds: [0, 1, 0, 2, 2]\n")
    with pytest.raises(config.ConfigError, match=r"mlp\.seeds: seeds repeat: 0, 2 \(got \[0, 1, 0, 2, 2\]\)"):
        config.load(path)
