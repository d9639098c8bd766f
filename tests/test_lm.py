"""LM loading: quickstart training + cache, local directories, tiny configs, error paths."""

import time

import pytest
import torch

from maccap.errors import UserError
from maccap.lm import QuickstartLMConfig, encode_captions, lm_identity, load_lm, words

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """2 shared cores: thread oversubscription makes tiny models 20x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


CORPUS = [f"a {c} {s} next to a {c2} {s2}." for c in ("red", "blue", "green") for s in ("circle", "square")
          for c2 in ("yellow", "red") for s2 in ("star", "triangle")] * 4


def test_quickstart_trains_caches_and_reloads(tmp_path):
    cfg = QuickstartLMConfig(n_embd=32, n_layer=1, n_head=2, steps=60, batch_size=16, warmup=5, lr=5e-3)
    model, tok = load_lm("quickstart", "cpu", corpus=CORPUS, cache_dir=tmp_path, config=cfg)
    dirs = list(tmp_path.glob("quickstart-lm-*"))
    assert len(dirs) == 1 and (dirs[0] / "model.safetensors").is_file()
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert tok.pad_token_id != tok.eos_token_id and tok.bos_token_id is not None
    assert tok.decode(tok("a red circle.", add_special_tokens=False)["input_ids"]) == "a red circle."
    # learnt the corpus: the greedy continuation of BOS is a corpus-like caption
    ids = torch.tensor([[tok.bos_token_id]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith("a ") and "next to" in text
    # the second call reuses the cache (no retraining) and gives the same weights
    stamp = (dirs[0] / "model.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    model2, _ = load_lm("quickstart", "cpu", corpus=CORPUS, cache_dir=tmp_path, config=cfg)
    assert time.perf_counter() - t < 5
    assert (dirs[0] / "model.safetensors").stat().st_mtime_ns == stamp
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert "weights_sha256" in lm_identity("quickstart", model2)
    # a different seed is a different cache entry
    load_lm("quickstart", "cpu", corpus=CORPUS, cache_dir=tmp_path,
            config=QuickstartLMConfig(n_embd=32, n_layer=1, n_head=2, steps=2, batch_size=16, warmup=1, seed=1))
    assert len(list(tmp_path.glob("quickstart-lm-*"))) == 2


def test_local_directory_roundtrip(tmp_path):
    model, tok = load_lm("tiny-gpt2", corpus=CORPUS)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    m2, t2 = load_lm(str(tmp_path / "m"))
    assert len(t2) == len(tok)
    assert torch.equal(m2.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_encode_captions_bos_eos_truncation():
    _, tok = load_lm("tiny-gpt2", corpus=CORPUS)
    ids, lengths = encode_captions(tok, ["a red circle.", "a red circle next to a yellow star."], max_len=5)
    assert ids.shape == (2, 5) and lengths.tolist() == [5, 5]
    assert ids[:, 0].tolist() == [tok.bos_token_id] * 2 and ids[:, -1].tolist() == [tok.eos_token_id] * 2
    ids, lengths = encode_captions(tok, ["a red", "a red circle."], max_len=25)
    assert lengths.tolist() == [4, 6] and ids[0, 4:].tolist() == [tok.pad_token_id] * 2
    assert words("A red-circle.") == ["a", "red", "-", "circle", "."]


def test_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(UserError, match="no-such-org/no-such-lm.*local directory"):
        load_lm("no-such-org/no-such-lm")
    assert time.perf_counter() - t < 10
    with pytest.raises(UserError, match="GGUF file"):
        load_lm(f"gguf:{tmp_path}/missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_lm(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="corpus"):
        load_lm("quickstart")


@pytest.mark.slow
def test_smollm2_prefix_generation():
    pytest.importorskip("gguf")
    model, tok = load_lm("smollm2")
    emb = torch.randn(2, 4, model.get_input_embeddings().embedding_dim) * 0.01
    out = model.generate(inputs_embeds=emb, attention_mask=torch.ones(2, 4, dtype=torch.long), num_beams=2,
                         max_new_tokens=4, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2


def test_lm_batches_mask_the_context_and_keep_captions():
    from maccap.lm import _lm_batch, build_word_tokenizer

    tok = build_word_tokenizer(CORPUS)
    ids, lengths = encode_captions(tok, CORPUS[:8], 25)
    cfg = QuickstartLMConfig(context_prob=1.0, context_drop=0.0)
    batch, mask, labels, pos = _lm_batch(ids, lengths, torch.arange(8), cfg, torch.Generator().manual_seed(0))
    for j in range(8):
        n = int(lengths[j])
        row = batch[j, : int(mask[j].sum())].tolist()
        ctx, cap = row[: len(row) - n], row[len(row) - n:]
        assert cap == ids[j, :n].tolist()
        assert sorted(ctx) == sorted(cap[1:-1])  # the context is the caption's words, shuffled
        assert (labels[j, : len(ctx) + 1] == -100).all()  # context and BOS are never targets
        assert labels[j, len(ctx) + 1: len(row)].tolist() == cap[1:]
    assert (pos[:, 1:] - pos[:, :-1] == 1).all() and pos.max() < cfg.n_positions
    plain = _lm_batch(ids, lengths, torch.arange(8), QuickstartLMConfig(context_prob=0.0), torch.Generator())
    assert torch.equal(plain[0][:, : ids.shape[1]], ids)
    # a text with a context text (a QA text and its scene's caption) gets that text's words instead
    ctx_ids, ctx_len = encode_captions(tok, CORPUS[8:16], 25)
    ctx_len[1] = 0  # no context text: its own words
    batch, mask, _, _ = _lm_batch(ids, lengths, torch.arange(8), cfg, torch.Generator(), ctx_ids, ctx_len)
    for j in range(8):
        row = batch[j, : int(mask[j].sum())].tolist()
        own = ids[j, 1: int(lengths[j]) - 1].tolist()
        given = own if j == 1 else ctx_ids[j, 1: int(ctx_len[j]) - 1].tolist()
        assert sorted(row[: len(row) - int(lengths[j])]) == sorted(given)


def test_a_shipped_lm_with_the_same_key_is_used_and_a_damaged_one_is_not(tmp_path, monkeypatch):
    import shutil

    import maccap.lm as L

    cfg = QuickstartLMConfig(n_embd=32, n_layer=1, n_head=2, steps=5, batch_size=8, warmup=1)
    trained = L.train_quickstart_lm(CORPUS, tmp_path / "train", cfg)
    ship = tmp_path / "ship"
    shutil.copytree(trained, ship / trained.name)
    monkeypatch.setattr(L, "SHIPPED_DIR", ship)

    def no_training(*a, **k):
        raise AssertionError("the shipped LM should have been used")

    monkeypatch.setattr(L, "_train_quickstart_lm", no_training)
    assert L.train_quickstart_lm(CORPUS, tmp_path / "cache", cfg) == ship / trained.name
    with pytest.raises(AssertionError):  # another config is another key: trained, not shipped
        L.train_quickstart_lm(CORPUS, tmp_path / "cache", QuickstartLMConfig(n_embd=32, n_layer=1, n_head=2, steps=6))
    (ship / trained.name / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(AssertionError):  # a shipped file failing its checksum is never loaded
        L.train_quickstart_lm(CORPUS, tmp_path / "cache", cfg)


def _caption_nll(directory, texts) -> float:
    """Mean next-token NLL of BOS + text + EOS, the plain captioning form of the LM's input."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(directory), AutoModelForCausalLM.from_pretrained(directory).eval()
    ids, lengths = encode_captions(tok, texts, 40)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
    target, keep = ids[:, 1:], mask[:, 1:].bool()
    return float(-logp.gather(-1, target[..., None])[..., 0][keep].mean())


@pytest.mark.slow
def test_the_shipped_quickstart_lm_is_what_training_gives(tmp_path):
    """The suites' shipped LM: the default world's corpus maps to its key, and retraining it gives the
    same tokenizer and an equally good LM.

    Not the same bytes: another CPU (or thread count) changes the last bits of the sums, and 800 Adam
    steps carry that into weights up to ~20% apart. Measured on the test split's captions (templated: half
    of them occur verbatim in the corpus): NLL 1.14582 shipped against 1.14593 retrained on another machine.
    """
    import maccap.lm as L
    from maccap.data import load_split
    from maccap.io import sha256_file
    from maccap.lm_corpus import lm_pretraining_corpus
    from maccap.world import WorldConfig, ensure_world

    world = tmp_path / "world"
    ensure_world(world, 0, WorldConfig.preset("default"), progress=False)
    cfg = QuickstartLMConfig(qa_texts=20000, steps=800)
    texts, contexts = lm_pretraining_corpus(world, cfg.seed, cfg.qa_texts, max_tokens=cfg.max_len - 2)
    path = L.train_quickstart_lm(texts, tmp_path / "cache", cfg, contexts=contexts)
    assert path.parent == L.SHIPPED_DIR, "the default world's corpus no longer maps to the shipped LM's key"
    again = tmp_path / "again"
    L._train_quickstart_lm(texts, contexts, again, cfg, progress=False)
    for name in ("tokenizer.json", "config.json"):
        assert sha256_file(again / name) == sha256_file(path / name), name
    test_caps = [c for r in load_split(world, "test").records for c in r.captions][:2000]
    shipped, retrained = _caption_nll(path, test_caps), _caption_nll(again, test_caps)
    assert shipped < 2.0 and abs(retrained - shipped) < 0.005 * shipped, (shipped, retrained)
