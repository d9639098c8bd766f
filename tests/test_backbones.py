"""Backbone registry, loading (offline tags, local files, QuickGELU) and per-token encoders."""

from __future__ import annotations

import logging
import socket
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from maccap import backbones as B
from maccap.errors import UserError


def _random_model(arch: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = B._open_clip().create_model(arch, pretrained=None, **kw)
    return model.eval()


def _backbone(arch: str, seed: int = 0) -> B.Backbone:
    model = _random_model(arch, seed)
    return B.Backbone(arch, arch, model, lambda im: im, B._tokenizer(arch), "random")


@pytest.fixture(scope="module")
def rn() -> B.Backbone:
    return _backbone("qs-rn")


@pytest.fixture(scope="module")
def vit() -> B.Backbone:
    return _backbone("qs-vit")


def _images(bb: B.Backbone, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)


def test_unknown_quickstart_name_suggests():
    with pytest.raises(UserError, match="did you mean 'qs-rn'"):
        B.load_backbone("qs-rm")


def test_unknown_arch_and_tag_suggest():
    with pytest.raises(UserError, match="ViT-B-32"):
        B.load_backbone("ViT-B-23/openai")
    with pytest.raises(UserError, match="did you mean 'openai'"):
        B.load_backbone("ViT-B-32/opena")


@pytest.mark.parametrize("how", ["env", "socket"])
def test_pretrained_tag_offline_is_fast_user_error(monkeypatch, how):
    monkeypatch.setattr(B, "_cached_file", lambda cfg: None)  # never pick up a user's cached weights
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MACCAP_OFFLINE"):
            monkeypatch.delenv(var, raising=False)

        def refuse(*a, **k):
            raise OSError("network is unreachable")

        monkeypatch.setattr(socket, "create_connection", refuse)
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        B.load_backbone("ViT-B-32/openai")
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "ViT-B-32/openai" in msg and "ViT-B-32@/path/to/weights" in msg and "\n" not in msg


def test_missing_and_corrupt_weight_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        B.load_backbone(f"qs-vit@{tmp_path / 'nope.safetensors'}")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read weights file"):
        B.load_backbone(f"qs-vit@{bad}")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"x": torch.zeros(2)}, str(wrong))
    with pytest.raises(UserError, match="do not match the architecture"):
        B.load_backbone(f"qs-vit@{wrong}")


@pytest.mark.parametrize("arch", ["qs-rn", "qs-vit"])
def test_local_file_round_trip(tmp_path, arch):
    model = _random_model(arch, seed=3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    st, pt = tmp_path / "m.safetensors", tmp_path / "m.pt"
    save_file(state, str(st))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pt)
    ref = B.Backbone(arch, arch, model, lambda im: im, B._tokenizer(arch), "x")
    x = _images(ref)
    for path in (st, pt):
        bb = B.load_backbone(f"{arch}@{path}")
        assert bb.weights_id == B.sha256_file(path)
        assert torch.equal(bb.encode_image(x), ref.encode_image(x))
        assert torch.equal(bb.encode_text(["a red circle"]), ref.encode_text(["a red circle"]))
        assert not bb.quick_gelu


def test_sparse_token_embedding_round_trip(tmp_path):
    model = _random_model("qs-rn")
    with torch.no_grad():
        keep = torch.zeros(model.token_embedding.num_embeddings, dtype=torch.bool)
        keep[[0, 5, 49406, 49407]] = True
        model.token_embedding.weight[~keep] = 0
    sparse = B.sparsify(model.state_dict())
    assert sparse[B.SPARSE_ROWS_KEY].shape[0] == 4
    path = tmp_path / "s.safetensors"
    save_file({k: v.contiguous() for k, v in sparse.items()}, str(path))
    bb = B.load_backbone(f"qs-rn@{path}")
    assert torch.equal(bb.model.token_embedding.weight, model.token_embedding.weight)


def test_quick_gelu_trap(tmp_path, caplog):
    assert B._wants_quick_gelu("ViT-B-32", openai_weights=True)
    assert not B._wants_quick_gelu("ViT-B-32-quickgelu", openai_weights=True)
    assert not B._wants_quick_gelu("ViT-B-32", openai_weights=False)
    # a local file with OpenAI weights (by its name) gets QuickGELU and a log line
    model = _random_model("qs-vit", force_quick_gelu=True)
    path = tmp_path / "openai-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with caplog.at_level(logging.INFO, logger="maccap.backbones"):
        bb = B.load_backbone(f"qs-vit@{path}")
    assert bb.quick_gelu and "force_quick_gelu=True" in caplog.text
    act = bb.model.visual.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"
    x = _images(bb)
    ref = B.Backbone("r", "qs-vit", model, lambda im: im, B._tokenizer("qs-vit"), "x")
    assert torch.equal(bb.encode_image(x), ref.encode_image(x))
    # the tag path logs the forced QuickGELU before it finds it cannot download
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maccap.backbones"):
        with pytest.raises(UserError):
            import os

            os.environ["MACCAP_OFFLINE"] = "1"
            try:
                B.load_backbone("RN50/openai")
            finally:
                del os.environ["MACCAP_OFFLINE"]
    assert "force_quick_gelu=True" in caplog.text


@pytest.mark.parametrize("name", ["rn", "vit"])
def test_image_tokens(name, request):
    bb: B.Backbone = request.getfixturevalue(name)
    x = _images(bb)
    it = bb.encode_image_tokens(x)
    n, d = x.shape[0], bb.embed_dim
    grid = bb.image_size // (32 if name == "rn" else bb.model.visual.patch_size[0])
    t = grid * grid + 1
    assert it.cls.shape == (n, d) and it.tokens.shape == (n, t, d) and it.attn.shape == (n, t, t)
    assert torch.equal(it.cls, bb.encode_image(x))
    assert torch.equal(it.tokens[:, 0], it.cls)
    assert torch.allclose(it.tokens.norm(dim=-1), torch.ones(n, t), atol=1e-5)
    assert torch.allclose(it.attn.sum(-1), torch.ones(n, t), atol=1e-5)
    assert (it.attn >= 0).all()


def test_vit_attention_matches_torch(vit):
    """The recomputed last-block attention equals nn.MultiheadAttention's own weights."""
    x = _images(vit, 2)
    block = vit.model.visual.transformer.resblocks[-1]
    store = {}
    h = block.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0]))
    it = vit.encode_image_tokens(x)
    h.remove()
    y = block.ln_1(store["x"])
    _, w = block.attn(y, y, y, need_weights=True, average_attn_weights=True)
    assert torch.allclose(it.attn, w, atol=1e-5)


def test_vit_tokens_match_forward_intermediates(vit):
    """Patch tokens equal ln_post(last-layer tokens) @ proj from open_clip's own intermediates."""
    x = _images(vit, 2)
    it = vit.encode_image_tokens(x)
    visual = vit.model.visual
    with torch.no_grad():
        out = visual.forward_intermediates(x, indices=1, output_fmt="NLC", output_extra_tokens=True)
        patches = F.normalize(visual.ln_post(out["image_intermediates"][-1]) @ visual.proj, dim=-1)
    assert torch.allclose(it.tokens[:, 1:], patches, atol=1e-5)


def test_resnet_attention_matches_torch(rn):
    x = _images(rn, 2)
    pool = rn.model.visual.attnpool
    store = {}
    h = pool.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0]))
    it = rn.encode_image_tokens(x)
    h.remove()
    f = store["x"].flatten(2).permute(2, 0, 1)
    f = torch.cat([f.mean(0, keepdim=True), f]) + pool.positional_embedding[:, None]
    with torch.no_grad():
        out, w = F.multi_head_attention_forward(
            f, f, f, f.shape[-1], pool.num_heads, None,
            torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
            pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=True, use_separate_proj_weight=True,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
            average_attn_weights=True)
    assert torch.allclose(it.attn, w, atol=1e-5)


def test_list_backbones_names_quickstart_first():
    names = B.list_backbones()
    assert names[:2] == ["qs-rn", "qs-vit"] and "ViT-B-32/openai" in names
