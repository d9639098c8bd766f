"""SynTIC: renderers, the synthetic-feature cache, alignment, projection, objects, training and captioning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from maccap import backbones as B
from maccap import renderers as R
from maccap import syntic as S
from maccap.captioning import caption_images, decap_project
from maccap.errors import UserError
from maccap.world import caption_is_true


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """2 shared cores: thread oversubscription makes tiny models 20x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from maccap.world import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("world") / "qs"
    cfg = dataclasses.replace(WorldConfig.preset("tiny"), n_clip=4, n_val=4, n_test=6, n_corpus=40)
    generate_world(root, 0, cfg, progress=False)
    return root


@pytest.fixture(scope="module")
def corpus(world):
    from maccap.data import load_corpus

    return load_corpus(world)


@pytest.fixture(scope="module")
def bb() -> B.Backbone:
    """A random qs-rn (the shipped config), the same way the feature-cache tests build one."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    torch.manual_seed(0)
    model = B._open_clip().create_model("qs-rn", pretrained=None)
    return B.Backbone("qs-rn", "qs-rn", model, B.TensorPreprocess(96, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
                      B._tokenizer("qs-rn"), "w0")


# ------------------------------------------------------------------------------------------ renderers

def test_world_renderer_is_deterministic_and_true_to_the_caption(corpus):
    r = R.get_renderer("world")
    caps = corpus[:40]
    a = r.render(caps, range(40), seed=3)
    b = r.render(caps[5:9], range(5, 9), seed=3)  # another batch: same images
    assert all(np.array_equal(np.asarray(a[5 + k]), np.asarray(b[k])) for k in range(4))
    c = r.render(caps[:4], range(4), seed=4)
    assert not all(np.array_equal(np.asarray(a[k]), np.asarray(c[k])) for k in range(4))
    for i, cap in enumerate(caps):
        scene, img = r.render_one(cap, i, 3)
        assert caption_is_true(cap, scene), cap
        assert np.array_equal(np.asarray(img), np.asarray(a[i]))
        assert img.size == (64, 64) and img.mode == "RGB"


def test_renderer_registry_errors():
    with pytest.raises(UserError, match="did you mean 'world'"):
        R.get_renderer("wrld")
    with pytest.raises(UserError, match="unknown option"):
        R.get_renderer("world", {"colour": 1})
    try:
        import diffusers  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install diffusers"):
            R.get_renderer("diffusers", {"model": "some/model"}).render(["a red circle"], [0], 0)
    with pytest.raises(UserError, match="model="):
        R.get_renderer("diffusers").pipeline()


def test_synthetic_feature_cache_hit(bb, corpus, tmp_path, monkeypatch):
    r = R.get_renderer("world")
    caps = corpus[:10]
    first = R.synthetic_features(bb, caps, r, 0, tmp_path, batch_size=4, progress=False)
    assert first.shape == (10, bb.embed_dim)
    assert torch.allclose(first.norm(dim=-1), torch.ones(10), atol=1e-5)
    assert torch.allclose(first[3], bb.encode_image(r.render([caps[3]], [3], 0))[0], atol=1e-5)
    monkeypatch.setattr(r, "render", lambda *a: (_ for _ in ()).throw(AssertionError("re-rendered")))
    assert torch.equal(R.synthetic_features(bb, caps, r, 0, tmp_path, progress=False), first)
    with pytest.raises(AssertionError, match="re-rendered"):  # another seed is another entry
        R.synthetic_features(bb, caps, r, 1, tmp_path, progress=False)


def test_image_cache_for_slow_renderers(bb, corpus, tmp_path, monkeypatch):
    r = R.WorldRenderer(cache_images=True)
    caps = corpus[:3]
    first = R.synthetic_features(bb, caps, r, 0, tmp_path, progress=False)
    pngs = sorted((tmp_path / "syntic_images").rglob("*.png"))
    assert len(pngs) == 3
    other = B.Backbone(bb.name, bb.arch, bb.model, bb.preprocess, bb.tokenizer, "w1")  # another weights id
    monkeypatch.setattr(r, "render", lambda *a: (_ for _ in ()).throw(AssertionError("re-rendered")))
    again = R.synthetic_features(other, caps, r, 0, tmp_path, progress=False)
    assert torch.allclose(again, first, atol=1e-5)  # from the PNGs, lossless


# ------------------------------------------------------------------------------------------ components

def _pairs(n=256, d=16, seed=0):
    """Caption features t and 'synthetic' features: a rotation of t, a common offset and noise."""
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    a = torch.randn(d, d, generator=g)
    q = torch.linalg.matrix_exp(0.15 * (a - a.T))  # a mild rotation
    offset = 0.8 * F.normalize(torch.randn(d, generator=g), dim=0)
    s = F.normalize(t @ q + offset + 0.1 * torch.randn(n, d, generator=g), dim=-1)
    return s, t


@pytest.mark.parametrize("mode", ["mean-shift", "adapter"])
def test_alignment_reduces_the_synthetic_text_gap(mode):
    s, t = _pairs()
    cfg = S.SynticConfig(align=mode, align_steps=150, align_batch=128)
    adapter, stats = S.fit_adapter(s, t, cfg, seed=0)
    a = adapter(s)
    assert S.centroid_gap(a, t) == pytest.approx(stats["centroid_gap_after"], abs=1e-5)
    assert stats["centroid_gap_after"] < 0.5 * stats["centroid_gap_before"]
    assert stats["paired_cosine_after"] > stats["paired_cosine_before"]
    assert not any(p.requires_grad for p in adapter.parameters())
    if mode == "adapter":  # training improves on the closed form
        base, base_stats = S.fit_adapter(s, t, S.SynticConfig(align="mean-shift"), seed=0)
        assert stats["paired_cosine_after"] > base_stats["paired_cosine_after"] + 0.05
        assert stats["loss_last"] < stats["loss_first"]
    none, st = S.fit_adapter(s, t, S.SynticConfig(align="none"), 0)
    assert torch.allclose(none(s), s, atol=1e-6)
    assert st["centroid_gap_after"] == pytest.approx(st["centroid_gap_before"])


def test_alignment_loss_ignores_duplicate_captions_as_negatives():
    t = F.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]), dim=-1)
    a = t.clone()
    dup = S.alignment_loss(a, t, 0.05, 0.0)
    distinct = S.alignment_loss(a[[0, 2]], t[[0, 2]], 0.05, 0.0)
    # the two copies are each other's positives (target 1/2, 1/2): the loss is the targets' entropy, its minimum
    assert float(distinct) == pytest.approx(0.0, abs=1e-4)
    assert float(dup) == pytest.approx(2 / 3 * np.log(2), abs=1e-4)
    assert float(S.alignment_loss(a, t, 0.05, 1.0) - dup) == pytest.approx(0.0, abs=1e-6)  # perfect pull


def test_projection_math():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(50, 8, generator=g), dim=-1)
    f = F.normalize(torch.randn(7, 8, generator=g), dim=-1)
    p = S.project_onto_texts(f, bank, 0.05, batch_size=3)
    assert torch.allclose(p, decap_project(f, bank, 0.05), atol=1e-6)
    w = (f.double() @ bank.double().T / 0.05).softmax(-1)
    assert torch.allclose(p.double(), F.normalize(w @ bank.double(), dim=-1), atol=1e-5)
    assert torch.allclose(S.project_onto_texts(bank[:5], bank, 1e-4), bank[:5], atol=1e-4)  # T -> 0: itself
    # leave-one-out: the identical caption (here two bank copies of it) gets no weight
    bank2 = torch.cat([bank, bank[:1]])
    loo = S.project_onto_texts(bank[:1], bank2, 1e-4, exclude=bank[:1])
    nearest = (bank[1:] @ bank[0]).argmax() + 1
    assert torch.allclose(loo[0], bank[nearest], atol=1e-4)


def test_world_object_extraction():
    two = "a small blue star to the left of a green cross."
    assert S.world_caption_objects(two) == ["a blue star", "a green cross"]
    assert S.world_caption_objects("two orange circles.") == ["an orange circle"]
    assert S.world_caption_objects("there is a triangle at the top.") == ["a triangle"]
    assert S.world_caption_objects("a red shape.") == []
    prompts = S.world_object_prompts()
    assert "an orange circle" in prompts and "a star" in prompts and len(prompts) == len(set(prompts)) == 40


def test_object_tokens_and_bridge_modes():
    d = 8
    prompts = ["a red circle", "a blue star", "a star"]
    feats = F.normalize(torch.randn(3, d, generator=torch.Generator().manual_seed(1)), dim=-1)
    vocab = S.ObjectVocabulary(prompts, feats, world=True)
    fallback = feats[[2, 2]]
    tok = vocab.caption_tokens(["a red circle above a blue star.", "a purple shape."], fallback, 3)
    assert torch.allclose(tok[0], feats[[0, 1, 0]], atol=1e-6)  # the caption's objects, cycled
    assert torch.allclose(tok[1, 0], feats[2], atol=1e-6)  # none named: the most similar prompt
    generic = S.ObjectVocabulary(["dog", "frisbee"], feats[:2], world=False)
    assert generic.from_caption("Two dogs catch a frisbee") == [0, 1]

    class Echo(torch.nn.Module):
        prefix_len = 1

        def forward(self, memory):
            return memory

    bank = F.normalize(torch.randn(20, d, generator=torch.Generator().manual_seed(2)), dim=-1)
    br = S.SynticBridge(Echo(), S.SynticConfig(objects=2, align="none"), bank, vocab)
    mem = torch.randn(4, 3, d)
    br.train()
    assert torch.equal(br(mem), mem)  # training memory passes through
    br.eval()
    img = F.normalize(torch.randn(4, 1, d), dim=-1)
    out = br(img)
    assert out.shape == (4, 3, d)
    assert torch.allclose(out[:, 0], S.project_onto_texts(img[:, 0], bank, 0.01), atol=1e-6)
    top = (img[:, 0] @ feats.T).argmax(-1)
    assert torch.allclose(out[:, 1], feats[top], atol=1e-6)
    assert "bank" not in br.state_dict() and "adapter.weight" in br.state_dict()


def test_config_from_method_and_validation():
    m = type("M", (), {"syntic_objects": 0, "syntic_project_temperature": 0.2, "name": "x"})()
    cfg = S.SynticConfig.from_method(m)
    assert cfg.objects == 0 and cfg.project_temperature == 0.2 and cfg.align == "adapter"
    with pytest.raises(UserError, match="syntic_align"):
        S.SynticConfig(align="rotate")
    with pytest.raises(UserError, match="project_temperature"):
        S.SynticConfig(project_temperature=0)


# ------------------------------------------------------------------------------------------ end to end

def test_syntic_trains_and_captions_the_tiny_world(bb, world, corpus, tmp_path):
    from maccap import features
    from maccap.aligner import AlignerConfig
    from maccap.lm import load_lm
    from maccap.methods import MethodConfig
    from maccap.noise import NoiseModel
    from maccap.train import TrainConfig, fit, new_captioner

    caps = corpus[:64]
    lm, tok = load_lm("tiny-gpt2", corpus=caps)
    method = MethodConfig("syntic-test", test_memory="cls", test_noise_variance=0.0, n_candidates=1, rerank=False,
                          train_noise_variance=0.0, num_beams=2, max_new_tokens=8)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_iters=2,
                      aligner=AlignerConfig(n_queries=2, n_heads=2, ffn_dim=32))
    cap = new_captioner(method, lm, tok, bb.embed_dim, cfg, train_seed=0)
    text = features.text_features(bb, caps, tmp_path, progress=False)
    bridge = S.attach(cap, method, bb, text, S.SynticConfig(objects=2, align_steps=20))
    mem = S.prepare_training(cap, bb, caps, text, tmp_path, train_seed=0)
    assert mem.shape == (64, 3, bb.embed_dim)
    st = bridge.info["alignment"]
    assert st["centroid_gap_after"] < st["centroid_gap_before"]
    before = {k: v.clone() for k, v in bridge.state_dict().items()}
    fit(cap, mem, caps, cfg, 0, NoiseModel.isotropic(0.0))
    after = bridge.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("aligner."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("adapter."))  # frozen
    names, toks = features.image_tokens(bb, world, "test", tmp_path, progress=False)
    res = caption_images(cap, toks.cls, None, None, None, eval_seed=0)
    assert len(res) == len(names) and all(isinstance(r.caption, str) for r in res)
    again = caption_images(cap, toks.cls, None, None, None, eval_seed=5)
    assert [r.caption for r in res] == [r.caption for r in again]  # no test-time randomness


def test_synthetic_real_gap(bb, world, tmp_path):
    pairs = S.synthetic_real_pairs(bb, world, tmp_path, splits=("val", "test"))
    assert len(pairs.real) == 10 and len(pairs.synthetic) == len(pairs.text) == len(pairs.text_image) == 50
    out = S.synthetic_real_gap(pairs)
    s = out["summary"]
    assert out["gap"]["centroid_gap"] == pytest.approx(s["centroid_gap_real_synthetic"], rel=1e-5)
    assert 0 < s["centroid_gap_real_synthetic"] < 2 and out["gap"]["n_pairs"] == 50
    assert -1 <= s["paired_cosine_real_synthetic"] <= 1 and "isotropic_sigma2" in out["metrics"]


def test_gap_task_runs_on_real_vs_synthetic_pairs(world, tmp_path):
    """The gap task's `pairs: real-synthetic`: the caption's rendered image takes the text feature's place."""
    from benchmark.store import RunKey
    from benchmark.tasks import TASKS, RunContext, load_tasks
    from maccap.backbones import load_backbone

    load_tasks()

    def run(pairs: str):
        ctx = RunContext(key=RunKey("s", "gap", "default", "qs-rn", 0), run_dir=tmp_path / pairs, work_dir=tmp_path / "w",
                         data_dir=world, dataset="quickstart", params={"pairs": pairs, "figures": False}, progress=False)
        return TASKS.get("gap")(ctx)

    synth, text = run("real-synthetic"), run("image-text")
    assert synth.counts == text.counts and synth.extra["gap"]["n_pairs"] == 30
    expected = S.synthetic_real_gap(S.synthetic_real_pairs(load_backbone("qs-rn"), world, tmp_path / "w2",
                                                           splits=("test",)))
    assert synth.metrics["centroid_gap"] == pytest.approx(expected["summary"]["centroid_gap_real_synthetic"], rel=1e-4)
    assert synth.metrics["centroid_gap"] != pytest.approx(text.metrics["centroid_gap"], rel=1e-3)
    with pytest.raises(UserError, match="pairs='text-text'"):
        run("text-text")


# ------------------------------------------------------------------------------------------ the harness

def test_registered_methods_carry_the_syntic_config():
    from maccap.methods import get_method

    assert S.SynticConfig.from_method(get_method("syntic")) == S.SynticConfig()  # one set of defaults
    assert S.SynticConfig.from_method(get_method("syntic-no-align")).align == "none"
    assert S.SynticConfig.from_method(get_method("syntic-no-project")).project is False
    assert S.SynticConfig.from_method(get_method("syntic-no-objects")).objects == 0
    assert "train_source" not in get_method("maccap").train_fields()  # other cache keys unchanged
    keys = get_method("syntic").train_fields()
    assert keys["train_source"] == "synthetic" and keys["syntic_objects"] == 3
    assert get_method("syntic", {"syntic_objects": 0}).train_fields() != keys
    with pytest.raises(UserError, match="test_memory='cls'"):
        get_method("syntic", {"test_memory": "regions"})
    with pytest.raises(UserError, match="syntic_align"):
        get_method("syntic", {"syntic_align": "rotate"})


def test_train_or_load_syntic_end_to_end(bb, world, tmp_path, monkeypatch):
    from maccap import renderers
    from maccap.aligner import AlignerConfig
    from maccap.features import image_tokens
    from maccap.methods import get_method
    from maccap.train import TrainConfig, train_or_load

    method = get_method("syntic", {"syntic_align_steps": 20, "num_beams": 2, "max_new_tokens": 8})
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, warmup_iters=2, max_captions=96, val_images=1,
                      aligner=AlignerConfig(n_queries=2, n_heads=2, ffn_dim=32))
    cap = train_or_load(method, bb, "tiny-gpt2", world, tmp_path, 0, cfg)
    assert isinstance(cap.bridge, S.SynticBridge) and cap.info["syntic"]["alignment"]["n_pairs"] == 96
    _, toks = image_tokens(bb, world, "test", tmp_path / "features", progress=False)
    first = [r.caption for r in caption_images(cap, toks.cls, toks.tokens, toks.attn, bb.encode_text, 0)]
    monkeypatch.setattr(renderers.WorldRenderer, "render",
                        lambda *a: (_ for _ in ()).throw(AssertionError("re-rendered")))
    again = train_or_load(method, bb, "tiny-gpt2", world, tmp_path, 0, cfg)  # cached: no rendering, same weights
    assert torch.equal(again.bridge.adapter.weight, cap.bridge.adapter.weight)
    assert [r.caption for r in caption_images(again, toks.cls, toks.tokens, toks.attn, bb.encode_text, 0)] == first
