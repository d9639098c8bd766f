"""Feature cache: hit, miss, sharded streaming, corruption and foreign-version recovery."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from maccap import backbones as B
from maccap import features as FT


@pytest.fixture(scope="module")
def bb() -> B.Backbone:
    torch.manual_seed(0)
    model = B._open_clip().create_model("qs-rn", pretrained=None)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return B.Backbone("qs-rn", "qs-rn", model, B.TensorPreprocess(96, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
                      B._tokenizer("qs-rn"), "w0")


TEXTS = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "star")]


def _entry(tmp_path):
    return next(p for p in (tmp_path / "features").iterdir() if p.is_dir())


def test_text_cache_miss_then_hit(bb, tmp_path, monkeypatch):
    first = FT.text_features(bb, TEXTS, tmp_path, batch_size=4, progress=False)
    assert first.shape == (len(TEXTS), bb.embed_dim)
    assert torch.allclose(first, bb.encode_text(TEXTS))
    monkeypatch.setattr(bb, "encode_text", lambda t: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert torch.equal(FT.text_features(bb, TEXTS, tmp_path, progress=False), first)
    with pytest.raises(AssertionError, match="recomputed"):  # other texts are another entry
        FT.text_features(bb, TEXTS[:3], tmp_path, progress=False)


def test_key_depends_on_weights(bb, tmp_path):
    FT.text_features(bb, TEXTS, tmp_path, progress=False)
    other = B.Backbone(bb.name, bb.arch, bb.model, bb.preprocess, bb.tokenizer, "w1")
    FT.text_features(other, TEXTS, tmp_path, progress=False)
    assert len([p for p in (tmp_path / "features").iterdir() if p.is_dir()]) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "version", "sidecar"])
def test_corrupt_cache_is_recomputed(bb, tmp_path, caplog, damage):
    first = FT.text_features(bb, TEXTS, tmp_path, progress=False)
    entry = _entry(tmp_path)
    shard = entry / "shard00000.safetensors"
    meta = json.loads((entry / "meta.json").read_text())
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:50])
    elif damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[-3] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif damage == "version":
        meta["version"] = 999
        (entry / "meta.json").write_text(json.dumps(meta))
    else:
        (entry / "meta.json").write_text("{not json")
    calls = []
    orig = bb.encode_text
    bb.encode_text = lambda t: calls.append(len(t)) or orig(t)
    try:
        with caplog.at_level(logging.WARNING, logger="maccap.features"):
            again = FT.text_features(bb, TEXTS, tmp_path, progress=False)
    finally:
        del bb.encode_text
    assert calls and torch.equal(again, first) and "recomputing" in caplog.text
    assert json.loads((entry / "meta.json").read_text())["version"] == FT.CACHE_VERSION


def test_streams_into_shards(bb, tmp_path, monkeypatch):
    monkeypatch.setattr(FT, "SHARD_ROWS", 4)
    feats = FT.text_features(bb, TEXTS, tmp_path, batch_size=3, progress=False)
    meta = json.loads((_entry(tmp_path) / "meta.json").read_text())
    assert [s["rows"] for s in meta["shards"]] == [4, 4, 1] and meta["rows"] == 9
    assert torch.allclose(feats, bb.encode_text(TEXTS), atol=1e-5)


def test_image_tokens_cached(bb, tmp_path, monkeypatch):
    from test_clip_train import make_world

    world = make_world(tmp_path / "w", n_clip=4, n_val=5)
    names, it = FT.image_tokens(bb, world, "val", tmp_path / "c", batch_size=2, progress=False)
    assert len(names) == 5 and it.tokens.shape == (5, 10, bb.embed_dim) and it.attn.shape == (5, 10, 10)
    imgs = [FT._open_image(world, e) for e in FT._split_entries(world, "val")]
    ref = bb.encode_image_tokens(imgs)
    assert torch.allclose(it.cls, ref.cls, atol=1e-6)
    assert torch.allclose(it.tokens, ref.tokens, atol=2e-3)  # float16 storage
    assert torch.allclose(it.attn.sum(-1), torch.ones(5, 10), atol=1e-2)
    monkeypatch.setattr(bb, "encode_image_tokens", lambda x: (_ for _ in ()).throw(AssertionError("recomputed")))
    names2, it2 = FT.image_tokens(bb, world, "val", tmp_path / "c", progress=False)
    assert names2 == names and torch.equal(it2.tokens, it.tokens)


class _SlowBackbone:
    """Just what the text cache needs; encode_text is slow and counted, to expose racing writers."""

    name, weights_id, embed_dim = "slow", "w0", 4

    def __init__(self) -> None:
        self.calls = 0

    def encode_text(self, texts):
        import time

        self.calls += 1
        time.sleep(0.2)
        return torch.nn.functional.normalize(torch.arange(len(texts) * 4, dtype=torch.float32).view(-1, 4) + 1, dim=-1)


def test_concurrent_writers_share_one_entry(tmp_path, monkeypatch):
    """Workers of a sweep share work_dir/features: one computes, the others wait and read its entry."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(FT, "SHARD_ROWS", 3)  # several shard files, so a racing rewrite would show
    bb = _SlowBackbone()
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: FT.text_features(bb, TEXTS, tmp_path, batch_size=2, progress=False), range(4)))
    assert bb.calls == 5  # one writer: ceil(9 / 2) batches, once
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    assert len(json.loads((_entry(tmp_path) / "meta.json").read_text())["shards"]) == 3
