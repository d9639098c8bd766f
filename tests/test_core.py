"""Shared utilities: atomic writes, registries, seeding, the result store."""

from __future__ import annotations

import json
import stat
import numpy as np
import pytest
import torch

from benchmark.store import RunKey, TaskOutput, build_result, is_complete, iter_results, read_result, slug, write_run
from maccap.errors import UserError
from maccap.io import atomic_path, atomic_write_json, hash_config, read_json
from maccap.registry import Registry
from maccap.seed import seed_everything


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path):
    """A temp file is created 0600; the finished file must not keep that (a served report would 403)."""
    atomic_write_json(tmp_path / "a.json", {})
    (tmp_path / "b.json").write_text("{}")
    mode = stat.S_IMODE((tmp_path / "b.json").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode  # 0644 under the usual umask, not 0600


def test_provenance_says_when_the_code_differs_from_its_commit(tmp_path):
    import subprocess

    from benchmark.store import git_commit, git_dirty

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "c")
    (tmp_path / "notes.txt").write_text("untracked files do not make results irreproducible")
    assert len(git_commit(tmp_path)) == 40 and git_dirty(tmp_path) is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True
    assert git_dirty(tmp_path / "nowhere") is None  # no repository: unknown, not clean


def test_atomic_write_unwritable_dir_is_user_error(tmp_path, monkeypatch):
    """Permission bits do not stop root, so the refusal is simulated where the OS would raise it."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("maccap.io.tempfile.mkstemp", refuse)
    with pytest.raises(UserError, match="cannot write .*Permission denied"):
        atomic_write_json(tmp_path / "x.json", {})
    assert not (tmp_path / "x.json").exists()


def test_atomic_write_parent_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_json(tmp_path / "f" / "x.json", {})


@pytest.mark.parametrize("content,msg", [(b"", "empty"), (b"{bad", "malformed"), (b"\xff\xfe[]", "UTF-8")])
def test_read_json_errors_name_the_file(tmp_path, content, msg):
    p = tmp_path / "c.json"
    p.write_bytes(content)
    with pytest.raises(UserError, match=msg) as e:
        read_json(p)
    assert str(p) in str(e.value)


def test_read_json_missing(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_json(tmp_path / "nope.json", "caption file")


def test_registry_did_you_mean():
    reg: Registry[int] = Registry("method")
    reg.add("maccap", 1)
    reg.add("capdec", 2)
    assert reg.get("maccap") == 1
    with pytest.raises(UserError, match="did you mean 'maccap'"):
        reg.get("macap")
    with pytest.raises(ValueError):
        reg.add("maccap", 3)
    assert reg.names() == ["capdec", "maccap"]


def test_seed_everything_reproduces_all_generators():
    def draw():
        g = seed_everything(7)
        import random

        return random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item()

    assert draw() == draw()
    with pytest.raises(UserError, match="seed"):
        seed_everything(-1)


def test_hash_config_is_order_independent():
    assert hash_config({"a": 1, "b": [1, 2]}) == hash_config({"b": [1, 2], "a": 1})
    assert hash_config({"a": 1}) != hash_config({"a": 2})


def _result(tmp_path, seed=0, status="ok"):
    key = RunKey("s", "caption", "maccap", "ViT-B-32/openai", seed)
    out = TaskOutput(metrics={"CIDEr-D": 0.5}, skipped_metrics={"SPICE": "jars missing"}, counts={"images": 3})
    res = build_result(key, "quickstart", {"lr": 1e-4}, {"train": seed, "eval": 100 + seed}, out, {"total_s": 1.0},
                       status=status)
    return key, res, out


def test_result_round_trip_and_resume(tmp_path):
    key, res, _ = _result(tmp_path)
    run_dir = key.dir(tmp_path)
    assert "ViT-B-32__openai" in str(run_dir)
    assert not is_complete(run_dir)
    write_run(run_dir, res, items=[{"image_id": "1", "caption": "a red circle."}])
    back = read_result(run_dir / "result.json")
    assert back["metrics"] == {"CIDEr-D": 0.5}
    assert back["seeds"] == {"train": 0, "eval": 100}
    assert back["skipped_metrics"]["SPICE"] == "jars missing"
    assert back["artifacts"]["items"] == "items.jsonl"
    assert back["provenance"]["git_dirty"] in (True, False, None)  # None only outside a git checkout
    assert is_complete(run_dir, res["config_hash"])
    assert not is_complete(run_dir, "other-hash")
    assert [r["run_id"] for r in iter_results(tmp_path)] == [key.run_id]


def test_failed_run_is_not_complete(tmp_path):
    key, res, _ = _result(tmp_path, status="failed")
    write_run(key.dir(tmp_path), res)
    assert not is_complete(key.dir(tmp_path))


def test_corrupt_result_is_not_complete_and_read_errors(tmp_path):
    key, res, _ = _result(tmp_path)
    run_dir = key.dir(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text('{"schema_version": 1}')
    assert not is_complete(run_dir)
    with pytest.raises(UserError, match="missing field"):
        read_result(run_dir / "result.json")


def test_slug():
    assert slug("ViT-B-32@/tmp/w.pt") == "ViT-B-32__tmp__w.pt"
