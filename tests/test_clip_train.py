"""Tiny CLIP training: loss goes down, the cache is reused, evaluation metrics are right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maccap import clip_train as C
from maccap.errors import UserError


def make_world(root: Path, n_clip: int = 48, n_val: int = 12, seed: int = 0) -> Path:
    """A small world on disk: the real generator's tiny preset when it exists, else scenes + a toy grammar."""
    try:
        from maccap.world.config import WorldConfig
        from maccap.world.generate import generate_world
    except ImportError:
        return _toy_world(root, n_clip, n_val, seed)
    import dataclasses

    cfg = dataclasses.replace(WorldConfig.preset("tiny"), n_clip=n_clip, n_val=n_val, n_test=4, n_corpus=8)
    generate_world(root, seed, cfg, progress=False)
    return root


def _toy_world(root: Path, n_clip: int, n_val: int, seed: int) -> Path:
    from maccap.world.config import WorldConfig
    from maccap.world.scene import encode_png, render_scene, sample_scene

    rng = np.random.default_rng(seed)
    cfg = WorldConfig()
    for split, n in (("clip", n_clip), ("val", n_val)):
        entries = []
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            scene = sample_scene(rng, cfg)
            name = f"{split}_{i:04d}.png"
            (root / "images" / split / name).write_bytes(encode_png(render_scene(scene, 64, rng)))
            caps, objs = [], []
            for k in range(5):
                j = int(rng.integers(len(scene)))
                o = scene[j]
                caps.append([f"a {o['colour']} {o['shape']}", f"a {o['shape']}", f"a {o['size']} {o['colour']} {o['shape']}"][k % 3])
                objs.append([j])
            entries.append({"split": split, "image_name": name, "file_path": split, "captions": caps,
                            "scene": scene, "caption_objects": objs, "image_id": i})
        (root / f"captions_{split}.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


def test_training_lowers_loss_and_caches(world, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = C.TrainConfig(steps=30, batch_size=16, lr=2e-3)
    first = C.train_clip("qs-rn", world, seed=0, cache_dir=tmp_path, progress=False, config=cfg)
    assert not first.reused and first.path.is_file()
    prov = first.provenance
    assert prov["loss_last10"] < prov["loss_first10"]
    assert prov["steps"] == 30 and prov["seed"] == 0 and prov["data_hash_clip"] == C.split_hash(world, "clip")
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "i2t_consistent_r1", "zeroshot_colour", "zeroshot_shape",
                "logit_scale", "centroid_gap"):
        assert key in first.metrics
    assert first.metrics["i2t_consistent_r5"] >= first.metrics["i2t_r5"]
    assert first.path.stat().st_size < 6_000_000  # sparse vocabulary + fp16

    def boom(*a, **k):
        raise AssertionError("trained again instead of reusing the cache")

    monkeypatch.setattr(C, "_train", boom)
    second = C.train_clip("qs-rn", world, seed=0, cache_dir=tmp_path, progress=False, config=cfg)
    assert second.reused and second.path == first.path and second.metrics == first.metrics
    # another seed is another cache entry
    with pytest.raises(AssertionError, match="trained again"):
        C.train_clip("qs-rn", world, seed=1, cache_dir=tmp_path, progress=False, config=cfg)


def test_unknown_backbone_and_bad_steps(world, tmp_path):
    with pytest.raises(UserError, match="did you mean"):
        C.train_clip("qs-rnn", world, cache_dir=tmp_path)
    with pytest.raises(UserError, match="steps"):
        C.train_clip("qs-rn", world, steps=0, cache_dir=tmp_path)
    with pytest.raises(UserError, match="captions_clip.json"):
        C.train_clip("qs-rn", tmp_path / "nowhere", cache_dir=tmp_path)


def test_batches_are_seeded():
    a = C._Batches(10, [5] * 10, 4, torch.Generator().manual_seed(3))
    b = C._Batches(10, [5] * 10, 4, torch.Generator().manual_seed(3))
    for _ in range(5):
        ia, ca = a.next()
        ib, cb = b.next()
        assert torch.equal(ia, ib) and torch.equal(ca, cb) and len(set(ia.tolist())) == 4


def test_lr_schedule_warms_up_and_decays():
    cfg = C.TrainConfig(steps=100, lr=1.0, warmup_frac=0.1)
    lrs = [C._lr_at(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.01


def test_true_of_predicate():
    scene = [{"shape": "circle", "colour": "red", "size": "large"}, {"shape": "square", "colour": "blue", "size": "small"}]
    other = [{"shape": "circle", "colour": "blue", "size": "small"}]
    claims = C.caption_claims("a large red circle", scene, [0])
    assert claims == [{"shape": "circle", "colour": "red", "size": "large"}]
    assert C.true_of(claims, scene) and not C.true_of(claims, other)
    shape_only = C.caption_claims("two circles", scene, [0])
    assert C.true_of(shape_only, other)


def test_retrieval_metrics():
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # caption 1 belongs to image 1 but looks like image 2
    owner = torch.tensor([0, 1, 2])
    consistent = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)
    m = C.retrieval_metrics(img, txt, owner, consistent, ks=(1,))
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["t2i_r1"] == pytest.approx(1 / 3)
    assert m["i2t_consistent_r1"] == 1.0 and m["t2i_consistent_r1"] == 1.0


def test_ensure_backbone_uses_shipped_only_when_hashes_match(world, tmp_path, monkeypatch):
    cfg = C.TrainConfig(steps=2, batch_size=8)
    monkeypatch.setitem(C.SHIPPED_CONFIGS, "qs-rn", cfg)
    trained = C.train_clip("qs-rn", world, seed=0, cache_dir=tmp_path / "a", progress=False, config=cfg)
    again = C.train_clip("qs-rn", world, seed=0, cache_dir=tmp_path / "c", progress=False, config=cfg)
    assert again.provenance["weights_sha256"] == trained.provenance["weights_sha256"]  # same seed, same bytes
    assert C.shipped_matches("qs-rn", world, 0, cfg) in (None, C.BACKBONES.get("qs-rn").shipped_weights)
    # pretend the trained file is the shipped one: it matches this world and seed, not another seed
    shipped_dir = tmp_path / "ship"
    shipped_dir.mkdir()
    (shipped_dir / "qs-rn.safetensors").write_bytes(trained.path.read_bytes())
    (shipped_dir / "qs-rn.json").write_text(trained.path.with_suffix(".json").read_text())
    monkeypatch.setattr(C.BACKBONES.get("qs-rn").__class__, "shipped_weights",
                        property(lambda self: shipped_dir / f"{self.name}.safetensors"))
    assert C.shipped_matches("qs-rn", world, 0, cfg) == shipped_dir / "qs-rn.safetensors"
    assert C.shipped_matches("qs-rn", world, 1, cfg) is None
    bb, info = C.ensure_backbone("qs-rn", world, seed=0, cache_dir=tmp_path / "b", progress=False)
    assert info.reused and info.path == shipped_dir / "qs-rn.safetensors" and bb.weights_id == info.provenance["weights_sha256"]


def test_cli_clip_train_trains_then_reuses(world, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from benchmark.commands.clip_train import command

    monkeypatch.setitem(C.SHIPPED_CONFIGS, "qs-vit", C.TrainConfig(steps=2, batch_size=8))
    args = ["--backbone", "qs-vit", "--world", str(world), "--seed", "0", "--steps", "2",
            "--cache-dir", str(tmp_path), "--no-progress"]
    first = CliRunner().invoke(command, args)
    assert first.exit_code == 0, first.output
    assert "trained weights" in first.output and "recall i2t" in first.output and "zero-shot colour" in first.output
    second = CliRunner().invoke(command, args)
    assert second.exit_code == 0 and "cached weights" in second.output
    bad = CliRunner().invoke(command, ["--backbone", "qs-vits", "--world", str(world)])
    assert bad.exit_code != 0 and "did you mean" in str(bad.exception)


def test_clip_task_returns_metrics(world, tmp_path, monkeypatch):
    from benchmark.store import RunKey
    from benchmark.tasks import TASKS, RunContext, load_tasks

    load_tasks()
    monkeypatch.setitem(C.SHIPPED_CONFIGS, "qs-rn", C.TrainConfig(steps=2, batch_size=8))
    ctx = RunContext(key=RunKey("quickstart", "clip", "none", "qs-rn", 0), run_dir=tmp_path / "run",
                     work_dir=tmp_path / "work", data_dir=world, dataset="quickstart", params={"steps": 2},
                     progress=False)
    out = TASKS.get("clip")(ctx)
    assert {"i2t_r1", "t2i_r5", "zeroshot_shape", "logit_scale", "centroid_gap"} <= set(out.metrics)
    assert out.counts["images"] == 12 and out.weights["steps"] == 2 and "captions_clip.json" in out.data_checksums
    assert list((tmp_path / "work" / "clip").glob("qs-rn-*.safetensors"))
