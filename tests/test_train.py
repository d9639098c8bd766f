"""Training: LM inputs and masking, the loss, the schedule, checkpoint resume, bad losses."""

import math

import pytest
import torch
from safetensors.torch import load_file

from maccap.aligner import AlignerConfig
from maccap.errors import UserError
from maccap.lm import encode_captions, load_lm
from maccap.methods import get_method
from maccap.noise import NoiseModel
from maccap.train import (TrainConfig, caption_loss, fit, lr_factor, lm_inputs,
                          new_captioner, training_memory)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """2 shared cores: thread oversubscription makes tiny models 20x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


CAPS = ["a red circle.", "a blue square next to a star.", "a green star.", "a big red triangle."] * 6


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return load_lm("tiny-gpt2", corpus=CAPS)


def test_lm_inputs_shapes_and_masking(lm):
    model, tok = lm
    ids, lengths = encode_captions(tok, CAPS[:2], 25)
    prefix = torch.randn(2, 3, 32)
    emb, mask, labels = lm_inputs(model, prefix, ids, lengths, mask_pad_labels=False)
    L = ids.shape[1]
    assert emb.shape == (2, 3 + L, 32) and mask.shape == labels.shape == (2, 3 + L)
    assert torch.equal(emb[:, :3], prefix)
    assert torch.equal(emb[:, 3:], model.get_input_embeddings()(ids))
    assert (labels[:, :4] == -100).all()  # prefix and BOS are never targets
    short = int(lengths.argmin())
    n = int(lengths[short])
    assert mask[short].tolist() == [1] * (3 + n) + [0] * (L - n)
    # reference quirk: pad tokens stay in the labels; the fix masks them
    assert (labels[short, 3 + n:] == tok.pad_token_id).all()
    _, _, fixed = lm_inputs(model, prefix, ids, lengths, mask_pad_labels=True)
    assert (fixed[short, 3 + n:] == -100).all()
    assert torch.equal(fixed[short, 4:3 + n], ids[short, 1:n])


class _FakeLM(torch.nn.Module):
    """Returns fixed logits that require grad, to see which positions the loss reads."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, inputs_embeds, attention_mask):
        return type("Out", (), {"logits": self.logits})()


def test_loss_ignores_the_prefix(lm):
    model, tok = lm
    ids, lengths = encode_captions(tok, CAPS[:2], 25)
    emb, mask, labels = lm_inputs(model, torch.randn(2, 3, 32), ids, lengths, mask_pad_labels=True)
    logits = torch.randn(2, emb.shape[1], len(tok), requires_grad=True)
    loss = caption_loss(_FakeLM(logits), emb, mask, labels)
    loss.backward()
    g = logits.grad.abs().sum(-1)
    assert (g[:, :3] == 0).all()  # prefix positions predict prefix/BOS: no gradient
    assert (g[:, 3] > 0).all()  # BOS position predicts the first caption word
    # equals the mean CE over caption tokens + EOS computed by hand
    terms = []
    for i in range(2):
        for t in range(1, int(lengths[i])):
            terms.append(-logits[i, 3 + t - 1].log_softmax(-1)[ids[i, t]])
    assert torch.allclose(loss, torch.stack(terms).mean())


def test_training_memory_copies_noise_and_image_free():
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    g = torch.Generator().manual_seed(0)
    mem = training_memory(get_method("maccap"), feats, NoiseModel.isotropic(0.016), g)
    assert mem.shape == (4, 10, 8) and torch.allclose(mem.norm(dim=-1), torch.ones(4, 10))
    assert 0.2 < (mem - feats[:, None]).norm(dim=-1).mean() < 0.5  # sqrt(8*0.016)~0.36 before renorm
    assert training_memory(get_method("maccap-1tok"), feats, NoiseModel.isotropic(0.016), g).shape == (4, 1, 8)
    assert (training_memory(get_method("no-image"), feats, NoiseModel.isotropic(0), g) == 0).all()


def test_schedule_warmup_then_cosine_per_epoch():
    cfg = TrainConfig(epochs=4, warmup_iters=10)
    assert lr_factor(0, 5, cfg) == pytest.approx(0.01)
    assert lr_factor(5, 5, cfg) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(10, 5, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert lr_factor(11, 5, cfg) == lr_factor(14, 5, cfg)  # constant within an epoch
    assert lr_factor(20, 5, cfg) == pytest.approx(0.1)


def _run(lm, tmp, stop=None, feats=None):
    model, tok = lm
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-3, warmup_iters=2,
                      aligner=AlignerConfig(n_queries=3, n_heads=2, ffn_dim=16, dropout=0.1))
    method = get_method("maccap")
    cap = new_captioner(method, model, tok, 8, cfg, train_seed=7)
    if feats is None:
        feats = torch.nn.functional.normalize(torch.randn(len(CAPS), 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    info = fit(cap, feats, CAPS, cfg, 7, NoiseModel.isotropic(0.016), ckpt_dir=tmp, stop_after_epoch=stop)
    return cap, info


def test_resume_is_bit_identical(lm, tmp_path):
    full, info_full = _run(lm, tmp_path / "a")
    _run(lm, tmp_path / "b", stop=0)
    assert (tmp_path / "b" / "epoch000" / "bridge.safetensors").is_file()
    assert not (tmp_path / "b" / "epoch001").exists()
    resumed, info_res = _run(lm, tmp_path / "b")
    for (k, a), b in zip(full.bridge.state_dict().items(), resumed.bridge.state_dict().values()):
        assert torch.equal(a, b), k
    assert info_full["history"] == info_res["history"]
    assert torch.load(tmp_path / "b" / "epoch002" / "state.pt", weights_only=True)["step"] == 9
    saved = load_file(str(tmp_path / "a" / "epoch002" / "bridge.safetensors"))
    assert torch.equal(saved["queries"], full.bridge.queries.detach())
    # the loss went down
    assert info_full["history"][-1]["loss"] < info_full["history"][0]["loss"]


def test_nan_loss_is_a_user_error_naming_the_step(lm, tmp_path):
    feats = torch.full((len(CAPS), 8), float("nan"))
    with pytest.raises(UserError, match="at step 0"):
        _run(lm, None, feats=feats)


def _mini_world(root):
    """A tiny data dir in the documented layout: coloured-square images, val/test captions, a corpus."""
    import json

    from PIL import Image

    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir()
    for split, n in (("val", 2), ("test", 4)):
        entries = []
        for i in range(n):
            c = list(colours)[i % 3]
            name = f"{split}_{i}.png"
            Image.new("RGB", (64, 64), colours[c]).save(root / "images" / name)
            entries.append({"split": split, "image_name": name, "image_id": i + (100 if split == "test" else 0),
                            "captions": [f"a {c} square.", f"a big {c} square."]})
        (root / f"captions_{split}.json").write_text(json.dumps(entries))
    (root / "corpus_train.json").write_text(json.dumps([f"a {c} {s}." for c in colours for s in ("square", "circle")] * 8))
    return root


@pytest.mark.slow
def test_caption_task_end_to_end(tmp_path):
    """train_or_load -> caption task -> metrics, items and COCO results, then the cache is reused."""
    import json

    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    from benchmark.store import RunKey
    from benchmark.tasks import RunContext
    from benchmark.tasks.caption import run_caption
    from maccap.backbones import _open_clip

    _open_clip()
    torch.manual_seed(0)
    model = open_clip.create_model("qs-rn", pretrained=None)
    weights = tmp_path / "qs-rn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    data = _mini_world(tmp_path / "data")
    params = {"backbone_weights": str(weights), "metrics": ["bleu", "cider", "clip_s"],
              "lm_config": {"n_embd": 32, "n_layer": 1, "n_head": 2, "steps": 20, "batch_size": 8, "warmup": 2},
              "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "warmup_iters": 2, "val_images": 1,
                        "aligner": {"n_queries": 2, "n_heads": 4, "ffn_dim": 32}}}
    for method in ("maccap", "decap"):
        key = RunKey("t", "caption", method, "qs-rn", 0)
        ctx = RunContext(key, tmp_path / "run" / method, tmp_path / "work", data, "mini", params, 0, 1, "cpu", False)
        out = run_caption(ctx)
        assert "CIDEr-D" in out.metrics and "CLIP-S" in out.metrics and out.counts["images"] == 4
        assert len(out.items) == 4 and out.items[0]["image_id"] == 100
        it = out.items[0]  # the report shows the references and draws MacCap's selected tokens on the token grid
        assert it["references"] and all(isinstance(r, str) for r in it["references"])
        if method == "maccap":
            patches = it["n_tokens"] - 1
            assert round(patches ** 0.5) ** 2 == patches and 0 <= min(it["region_indices"]) <= max(it["region_indices"]) <= patches
        else:
            assert it["region_indices"] is None and it["n_tokens"] is None
        coco = json.loads((ctx.run_dir / "captions_coco.json").read_text())
        assert [c["image_id"] for c in coco] == [100, 101, 102, 103]
    dirs = list((tmp_path / "work" / "captioners").iterdir())
    assert len(dirs) == 2
    tuned = {json.loads((d / "meta.json").read_text())["method"].get("finetune_lm", False): d for d in dirs}
    assert (tuned[True] / "lm.safetensors").is_file() and not (tuned[False] / "lm.safetensors").exists()
    assert json.loads((tuned[True] / "meta.json").read_text())["lm_sha256"]  # checked before reuse
    # reusing the cached captioner gives the same captions
    again = run_caption(ctx)
    assert [i["caption"] for i in again.items] == [i["caption"] for i in out.items]


@pytest.mark.slow
def test_cli_train_and_eval(tmp_path):
    import json

    import yaml
    from click.testing import CliRunner
    from safetensors.torch import save_file

    open_clip = pytest.importorskip("open_clip")
    from benchmark.cli import cli
    from maccap.backbones import _open_clip

    _open_clip()
    torch.manual_seed(0)
    weights = tmp_path / "qs-vit.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("qs-vit", pretrained=None).state_dict().items()},
              str(weights))
    data = _mini_world(tmp_path / "data")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"backbone_weights": str(weights), "metrics": ["cider"],
                                   "lm_config": {"n_embd": 32, "n_layer": 1, "n_head": 2, "steps": 5, "batch_size": 8},
                                   "train": {"epochs": 1, "batch_size": 8, "warmup_iters": 1, "val_images": 0,
                                             "aligner": {"n_queries": 2, "n_heads": 4, "ffn_dim": 16}}}))
    common = ["--backbone", "qs-vit", "--dataset", str(data), "--work-dir", str(tmp_path / "work"),
              "--config", str(cfg), "--no-progress", "--method", "maccap-no-rerank"]
    r = CliRunner().invoke(cli, ["train", *common, "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "captioner:" in r.output and "epoch 1: loss" in r.output
    r = CliRunner().invoke(cli, ["eval", *common, "--train-seed", "1", "--eval-seed", "2",
                                 "--results", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    res = json.loads(next((tmp_path / "res").rglob("result.json")).read_text())
    assert res["seeds"] == {"train": 1, "eval": 2} and "CIDEr-D" in res["metrics"]
    assert len(list((tmp_path / "work" / "captioners").iterdir())) == 1  # eval reused the trained captioner
    r = CliRunner().invoke(cli, ["train", *common[:-1], "no-such-method"])
    assert r.exit_code != 0 and "unknown method" in str(r.exception)


@pytest.mark.parametrize("base,ablation", [("capdec", "capdec-frozen-lm"), ("decap", "decap-frozen-lm"),
                                           ("maccap", "maccap-finetune-lm")])
def test_lm_recipe_ablations_change_nothing_but_the_lm_recipe(base, ablation):
    a, b = get_method(base).to_dict(), get_method(ablation).to_dict()
    assert {k for k in a if a[k] != b[k]} == {"name", "description", "finetune_lm"}


def test_finetune_lm_trains_a_copy_of_the_lm_and_the_frozen_variant_does_not(lm):
    import copy

    model, tok = lm
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, warmup_iters=1, val_images=0,
                      aligner=AlignerConfig(n_queries=2, n_layers=1, n_heads=2, ffn_dim=16, dropout=0.0))
    feats = torch.nn.functional.normalize(torch.randn(len(CAPS), 16), dim=-1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, tunes in (("capdec", True), ("capdec-frozen-lm", False), ("decap", True), ("decap-frozen-lm", False)):
        method = get_method(name)
        own = copy.deepcopy(model).requires_grad_(True) if tunes else model  # as train_or_load does
        cap = new_captioner(method, own, tok, 16, cfg, train_seed=0)
        fit(cap, feats, CAPS, cfg, 0, NoiseModel.isotropic(method.train_noise_variance))
        changed = any(not torch.equal(v, own.state_dict()[k]) for k, v in before.items())
        assert changed == tunes, name
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the shared LM untouched
