"""Artifacts: DVC-identical digests, atomic writes, clean-up of interrupted writes, paths kept inside."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from sublim import artifacts
from tests.conftest import BIN, cli_env


def test_directory_digest_matches_dvc_add(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    art = tmp_path / "thing"
    (art / "sub").mkdir(parents=True)
    (art / "a.bin").write_bytes(bytes(range(256)) * 10)
    (art / "sub" / "b.txt").write_text("hello\r\nworld\n")
    subprocess.run([str(BIN / "dvc"), "add", "-q", "thing"], cwd=tmp_path, check=True, env=cli_env())
    recorded = yaml.safe_load((tmp_path / "thing.dvc").read_text())["outs"][0]["md5"]
    assert artifacts.digest(art) == recorded
    assert artifacts.digest(art / "a.bin") != recorded


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out" / "model"
    with pytest.raises(RuntimeError):
        with artifacts.atomic_dir(dest) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_dir_replaces_existing_whole(tmp_path):
    dest = tmp_path / "model"
    with artifacts.atomic_dir(dest) as tmp:
        (tmp / "old.bin").write_bytes(b"old")
    with artifacts.atomic_dir(dest) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert sorted(p.name for p in dest.iterdir()) == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_clean_partials_removes_leftovers_of_a_kill(tmp_path):
    (tmp_path / "models" / ".tmp-g1-shared-1234abcd").mkdir(parents=True)
    (tmp_path / "models" / "kept").mkdir()
    removed = artifacts.clean_partials(tmp_path / "models")
    assert [p.name for p in removed] == [".tmp-g1-shared-1234abcd"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["kept"]


def test_meta_roundtrip_and_corruption(tmp_path):
    meta = artifacts.ArtifactMeta("model", "j", "s", {"a": 1}, {"init:x": "d"}, {"role": "base"})
    artifacts.write_meta(tmp_path, meta)
    assert artifacts.read_meta(tmp_path) == meta
    (tmp_path / artifacts.META).write_text("{not json")
    with pytest.raises(artifacts.ArtifactError, match="corrupt artifact metadata"):
        artifacts.read_meta(tmp_path)
    with pytest.raises(artifacts.ArtifactError, match="not a sublim artifact"):
        artifacts.read_meta(tmp_path / "nothing")


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "a/../../b"])
def test_paths_cannot_escape_the_project(tmp_path, bad):
    with pytest.raises(ValueError, match="escapes the project"):
        artifacts.inside(tmp_path, bad)
    assert artifacts.inside(tmp_path, "data/x") == (tmp_path / "data" / "x").resolve()
