"""Inference: memories, DeCap projection, decoding, reranking, seeding, batching."""

import pytest
import torch

from maccap.aligner import AlignerConfig
from maccap.captioning import (caption_images, caption_images_naive, clean_caption, clean_memory,
                               decap_project, decode_prefixes, rerank)
from maccap.lm import load_lm
from maccap.methods import get_method
from maccap.train import TrainConfig, new_captioner

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """2 shared cores: thread oversubscription makes tiny models 20x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


CAPS = ["a red circle.", "a blue square next to a star.", "a green star.", "a big red triangle."]
D = 8


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return load_lm("tiny-gpt2", corpus=CAPS)


def _captioner(lm, name, **over):
    model, tok = lm
    cfg = TrainConfig(aligner=AlignerConfig(n_queries=3, n_heads=2, ffn_dim=16))
    return new_captioner(get_method(name, over or None), model, tok, D, cfg, train_seed=0)


def _images(n=5, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.nn.functional.normalize(torch.randn(n, t, D, generator=g), dim=-1)
    attn = torch.randn(n, t, t, generator=g).softmax(-1)
    return tokens[:, 0].clone(), tokens, attn


def _encoder(texts):
    """A deterministic fake text encoder: features from a hash of each word."""
    out = torch.zeros(len(texts), D)
    for i, t in enumerate(texts):
        for w in t.split():
            out[i, sum(map(ord, w)) % D] += 1
    return torch.nn.functional.normalize(out + 1e-3, dim=-1)


def test_decap_projection_math():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    f = torch.nn.functional.normalize(torch.tensor([[2.0, 1.0]]), dim=-1)
    sims = (f @ bank.T).double()
    w = torch.exp(sims / 0.01) / torch.exp(sims / 0.01).sum()
    want = ((w @ bank.double()) / (w @ bank.double()).norm()).float()
    assert torch.allclose(decap_project(f, bank, 0.01), want, atol=1e-6)
    # low temperature -> the nearest text feature
    assert torch.allclose(decap_project(f, bank, 1e-4), bank[2:3], atol=1e-4)


def test_clean_memory_variants():
    cls, tokens, attn = _images()
    m = get_method("maccap")
    mem, idx = clean_memory(m, cls, tokens, attn)
    assert mem.shape == (5, 6, D) and idx.shape == (5, 6)  # k capped at the 6 tokens
    assert 1.0 < mem.norm(dim=-1).mean() <= 2.0  # cls + region, not renormalised yet
    mem, idx = clean_memory(get_method("maccap-no-subregion"), cls, tokens, attn)
    assert torch.equal(mem[:, 0], cls) and idx is None
    bank = torch.nn.functional.normalize(torch.randn(7, D), dim=-1)
    mem, _ = clean_memory(get_method("decap"), cls, None, None, bank)
    assert torch.allclose(mem[:, 0], decap_project(cls, bank))
    with pytest.raises(ValueError):
        clean_memory(get_method("decap"), cls, None, None, None)


def test_rerank_picks_the_argmax():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), dim=-1)
    feats = {"x": [1.0, 0, 0], "y": [0, 1.0, 0], "z": [0.7, 0.7, 0]}
    enc = lambda texts: torch.nn.functional.normalize(torch.tensor([feats[t] for t in texts]), dim=-1)
    scores, best = rerank([["z", "x", "y"], ["x", "z", "y"]], img, enc)
    assert best.tolist() == [1, 2]
    assert torch.allclose(scores[0], torch.tensor([0.7071, 1.0, 0.0]), atol=1e-4)


def test_greedy_decoding_matches_a_manual_loop(lm):
    cap = _captioner(lm, "maccap")
    model, tok = lm
    prefix = cap.prefix(torch.randn(2, 4, D))
    got = decode_prefixes(cap, prefix, num_beams=1, max_new_tokens=5)
    emb = torch.cat([prefix, model.get_input_embeddings()(torch.full((2, 1), tok.bos_token_id))], 1)
    ids = []
    with torch.no_grad():
        for _ in range(5):
            nxt = model(inputs_embeds=emb).logits[:, -1].argmax(-1)
            ids.append(nxt)
            emb = torch.cat([emb, model.get_input_embeddings()(nxt)[:, None]], 1)
    ids = torch.stack(ids, 1)
    want = []
    for row in ids.tolist():
        row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
        want.append(clean_caption(tok.decode(row, skip_special_tokens=True)))
    assert got == want


def test_same_seeds_identical_captions_independent_of_batching(lm):
    cap = _captioner(lm, "maccap")
    cls, tokens, attn = _images()
    a = caption_images(cap, cls, tokens, attn, _encoder, eval_seed=3, batch_size=5)
    b = caption_images(cap, cls, tokens, attn, _encoder, eval_seed=3, batch_size=2)
    assert [r.candidates for r in a] == [r.candidates for r in b]
    assert [r.caption for r in a] == [r.caption for r in b]
    for r in a:
        assert len(r.candidates) == 4 and r.caption == r.candidates[r.selected]
        assert r.selected == max(range(4), key=lambda j: r.scores[j])
    naive = caption_images_naive(cap, cls, tokens, attn, _encoder, eval_seed=3)
    assert [r.candidates for r in naive] == [r.candidates for r in a]


def test_eval_seed_changes_the_noise_only(lm):
    from maccap.captioning import draw_test_noise

    m = get_method("maccap")
    n1 = draw_test_noise(m, 3, 10, D, torch.Generator().manual_seed(1))
    n2 = draw_test_noise(m, 3, 10, D, torch.Generator().manual_seed(2))
    assert n1.shape == (3, 4, 10, D) and not torch.equal(n1, n2)
    assert draw_test_noise(get_method("maccap-no-noise"), 3, 10, D, torch.Generator()) is None


def test_no_rerank_takes_the_first_candidate(lm):
    cap = _captioner(lm, "maccap", rerank=False)
    cls, tokens, attn = _images(3)
    for r in caption_images(cap, cls, tokens, attn, _encoder, eval_seed=0):
        assert r.selected == 0 and r.caption == r.candidates[0]


def test_clean_caption():
    assert clean_caption("  a red  circle . a blue\nsecond line") == "a red circle."
    assert clean_caption("a red circle") == "a red circle"


def test_methods_registry_and_overrides():
    from maccap.errors import UserError
    from maccap.methods import METHODS

    assert {"maccap", "capdec", "decap", "maccap-no-noise", "maccap-no-subregion", "maccap-no-rerank",
            "maccap-1tok", "no-image"} <= set(METHODS.names())
    m = get_method("maccap")
    assert (m.train_memory_tokens, m.train_noise_variance, m.n_candidates, m.num_beams) == (10, 0.016, 4, 4)
    assert m.mask_pad_labels is False and m.region_weighting == "softmax_probs"  # reference quirks
    # test-time-only ablations share the trained weights; training ablations do not
    assert get_method("maccap-no-rerank").train_fields() == m.train_fields() == get_method("maccap-no-subregion").train_fields()
    assert get_method("maccap-1tok").train_fields() != m.train_fields()
    assert get_method("maccap", {"region_weighting": "probs"}).region_weighting == "probs"
    with pytest.raises(UserError, match="did you mean"):
        get_method("macap")
    with pytest.raises(UserError, match="unknown option"):
        get_method("maccap", {"n_candidate": 2})
    with pytest.raises(UserError, match="noise_model"):
        get_method("maccap", {"train_noise": "fitted-full"})


def test_no_image_memory_is_blind(lm):
    cap = _captioner(lm, "no-image")
    cls, tokens, attn = _images(3)
    out = caption_images(cap, cls, tokens, attn, _encoder, eval_seed=0)
    assert len({r.caption for r in out}) == 1  # the same caption whatever the image
