"""Zero-shot VQA: prompts and shapes, batching, seeds, the no-image baseline, the task end to end."""

from __future__ import annotations

import pytest
import torch

from maccap.errors import UserError
from maccap.lm import load_lm
from maccap.methods import get_method
from maccap.train import QUICKSTART_TRAIN, new_captioner
from maccap.vqa import (ImageInputs, VQAConfig, answer_questions, build_prompt, clean_answer, embed_batch,
                        fit_to_window, image_prefixes, prompt_ids)

TEXTS = ["a red circle at the top left.", "a blue square and a green star.", "two small triangles.",
         "Question: what colour is the circle? Short answer: red",
         "Question: how many stars are there? Short answer: 2",
         "Question: is there a square? Short answer: yes", "no purple cross"]
QUESTIONS = ["what colour is the circle?", "how many stars are there?", "is there a square?",
             "where is the red circle?"]
FEAT_DIM, N_TOKENS = 16, 5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded, and the test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def captioner():
    lm, tok = load_lm("tiny-gpt2", corpus=TEXTS)
    return new_captioner(get_method("maccap", {"n_regions": 3, "max_new_tokens": 6, "n_candidates": 3}), lm, tok, FEAT_DIM, QUICKSTART_TRAIN, train_seed=0)


def _images(seed: int, ids=(10, 11, 12)) -> ImageInputs:
    g = torch.Generator().manual_seed(seed)
    n = len(ids)
    cls = torch.nn.functional.normalize(torch.randn(n, FEAT_DIM, generator=g), dim=-1)
    tokens = torch.nn.functional.normalize(torch.randn(n, N_TOKENS, FEAT_DIM, generator=g), dim=-1)
    attn = torch.softmax(torch.randn(n, N_TOKENS, N_TOKENS, generator=g) * 3, dim=-1)
    return ImageInputs(list(ids), cls, tokens, attn)


def _questions(ids=(10, 11, 12), per_image: int = 3) -> list[dict]:
    return [{"question_id": 100 * i + k, "image_id": i, "question": QUESTIONS[(i + k) % len(QUESTIONS)]}
            for i in ids for k in range(per_image)]


# ------------------------------------------------------------------------------------------ prompts

def test_prompt_formats():
    cfg = VQAConfig()
    assert build_prompt("what  colour is\nthe circle?", cfg) == "Question: what colour is the circle? Short answer:"
    assert (build_prompt("is there a star?", cfg, context="a red star.")
            == "a red star. Question: is there a star? Short answer:")
    with pytest.raises(UserError, match="mode"):
        VQAConfig(mode="blind")
    with pytest.raises(UserError, match="question"):
        VQAConfig(prompt="Q: A:")


def test_prompt_ids_start_with_bos(captioner):
    tok = captioner.tokenizer
    rows = prompt_ids(tok, ["Question: is there a square? Short answer:"])
    assert rows[0][0] == tok.bos_token_id
    assert tok.decode(rows[0][1:]).replace(" ", "") == "question:isthereasquare?shortanswer:"


def test_embed_batch_left_pads_after_prefix(captioner):
    lm, tok = captioner.lm, captioner.tokenizer
    rows = [[2, 5, 6, 7], [2, 8]]
    prefix = torch.randn(2, 3, lm.get_input_embeddings().embedding_dim)
    emb, mask = embed_batch(lm, tok.pad_token_id, rows, prefix)
    assert emb.shape == (2, 3 + 4, prefix.shape[2]) and mask.shape == (2, 7)
    assert mask.tolist() == [[1] * 7, [0, 0, 1, 1, 1, 1, 1]]
    table = lm.get_input_embeddings().weight
    assert torch.equal(emb[1, 2:5], prefix[1]) and torch.equal(emb[1, 5:], table[[2, 8]])
    assert torch.equal(emb[0, :3], prefix[0]) and torch.equal(emb[0, 3:], table[rows[0]])
    emb2, mask2 = embed_batch(lm, tok.pad_token_id, rows, None)
    assert emb2.shape == (2, 4, prefix.shape[2]) and mask2[1].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("raw, want", [
    ("red", "red"), (" Red.", "Red"), ("2 stars. Question: what", "2 stars"), ("yes\nno", "yes"),
    ("top left question : where", "top left"), ("3.5 m", "3.5 m"), ("?!", ""), ("blue , green", "blue , green"),
])
def test_clean_answer(raw, want):
    assert clean_answer(raw) == want


def test_fit_to_window_keeps_bos_and_the_end():
    assert fit_to_window([1, 2, 3], 5) == [1, 2, 3]
    assert fit_to_window([1, 2, 3, 4, 5, 6], 4) == [1, 4, 5, 6]


# ------------------------------------------------------------------------------------------ answering

@pytest.mark.parametrize("mode", ["prefix", "caption", "no-image"])
def test_batched_equals_per_question(captioner, mode):
    qs = _questions(ids=(10, 12), per_image=3)
    imgs = _images(0)
    big = answer_questions(qs, VQAConfig(mode=mode, batch_size=16, caption_batch_size=3), captioner=captioner,
                           images=imgs, eval_seed=5)
    one = answer_questions(qs, VQAConfig(mode=mode, batch_size=1, caption_batch_size=1), captioner=captioner,
                           images=imgs, eval_seed=5)
    assert set(big.answers) == {q["question_id"] for q in qs}
    assert big.answers == one.answers
    for qid in big.answers:
        assert big.details[qid]["beam_score"] == pytest.approx(one.details[qid]["beam_score"], abs=1e-4)
        assert big.details[qid]["prompt"] == one.details[qid]["prompt"]


def test_same_eval_seed_same_answers_and_seed_drives_the_noise(captioner):
    qs, imgs = _questions(), _images(1)
    cfg = VQAConfig(mode="prefix")
    a = answer_questions(qs, cfg, captioner=captioner, images=imgs, eval_seed=7)
    b = answer_questions(qs, cfg, captioner=captioner, images=imgs, eval_seed=7)
    assert a.answers == b.answers and a.details == b.details
    p7 = image_prefixes(captioner, imgs, 7, use_noise=True)
    assert torch.equal(p7, image_prefixes(captioner, imgs, 7, use_noise=True))
    assert not torch.allclose(p7, image_prefixes(captioner, imgs, 8, use_noise=True))
    clean = image_prefixes(captioner, imgs, 7, use_noise=False)
    assert torch.equal(clean, image_prefixes(captioner, imgs, 8, use_noise=False))


def test_prefix_is_candidate_zero_of_the_caption_draw(captioner):
    from maccap.captioning import candidate_memories, clean_memory, draw_test_noise, memory_tokens

    imgs, method = _images(2), captioner.method
    noise = draw_test_noise(method, 3, memory_tokens(method), FEAT_DIM, torch.Generator().manual_seed(4))
    clean, _ = clean_memory(method, imgs.cls, imgs.tokens, imgs.attn)
    want = captioner.prefix(candidate_memories(clean, method.n_candidates, noise)[:, 0])
    assert torch.allclose(image_prefixes(captioner, imgs, 4, use_noise=True, batch_size=2), want, atol=1e-6)


def test_prefix_mode_reads_the_image(captioner):
    qs = _questions()
    cfg = VQAConfig(mode="prefix")
    a = answer_questions(qs, cfg, captioner=captioner, images=_images(0), eval_seed=0)
    b = answer_questions(qs, cfg, captioner=captioner, images=_images(9), eval_seed=0)
    assert any(a.details[q]["beam_score"] != pytest.approx(b.details[q]["beam_score"], abs=1e-5) for q in a.answers)


def test_no_image_baseline_ignores_the_image(captioner):
    qs = _questions()
    cfg = VQAConfig(mode="no-image")
    a = answer_questions(qs, cfg, captioner=captioner, images=_images(0), eval_seed=0)
    b = answer_questions(qs, cfg, captioner=captioner, images=_images(9), eval_seed=3)
    c = answer_questions(qs, cfg, lm=captioner.lm, tokenizer=captioner.tokenizer)  # no captioner, no images
    assert a.answers == b.answers == c.answers
    assert all(a.details[q]["prompt"].startswith("Question: ") for q in a.answers)
    # the same question always gets the same answer, whatever the image
    by_text: dict[str, set[str]] = {}
    for q in qs:
        by_text.setdefault(q["question"], set()).add(a.answers[q["question_id"]])
    assert all(len(v) == 1 for v in by_text.values())


def test_caption_mode_puts_the_caption_in_front(captioner):
    from maccap.captioning import caption_images

    imgs, qs = _images(3), _questions()
    out = answer_questions(qs, VQAConfig(mode="caption"), captioner=captioner, images=imgs, eval_seed=2)
    caps = caption_images(captioner, imgs.cls, imgs.tokens, imgs.attn, None, eval_seed=2)
    for q in qs:
        caption = caps[imgs.row[q["image_id"]]].caption
        assert out.captions[q["image_id"]][0] == caption
        assert out.details[q["question_id"]]["prompt"] == build_prompt(q["question"], VQAConfig(), caption)
    two = answer_questions(qs, VQAConfig(mode="caption", n_captions=2), captioner=captioner, images=imgs, eval_seed=2)
    assert all(1 <= len(v) <= 2 and v[0] == out.captions[k][0] for k, v in two.captions.items())


def test_missing_image_and_missing_captioner_are_user_errors(captioner):
    qs = _questions(ids=(10, 99))
    with pytest.raises(UserError, match="99"):
        answer_questions(qs, VQAConfig(mode="prefix"), captioner=captioner, images=_images(0))
    with pytest.raises(UserError, match="captioner"):
        answer_questions(qs, VQAConfig(mode="caption"), lm=captioner.lm, tokenizer=captioner.tokenizer)


# ------------------------------------------------------------------------------------------ task end to end

def _toy_vqa(scene: list[dict], image_id: int) -> list[tuple[str, str, str, str]]:
    """(question, answer, question_type, answer_type) for a toy data dir (the real world has its own)."""
    o = scene[0]
    return [(f"what colour is the {o['shape']}?", o["colour"], "what colour is the", "other"),
            (f"is there a {o['shape']}?", "yes", "is there a", "yes/no"),
            ("how many objects are there?", str(len(scene)), "how many", "number")]


def _write_toy_world(root, n_test: int = 6, n_corpus: int = 40, seed: int = 0):
    import json

    import numpy as np

    from maccap.metrics.vqa import write_annotations, write_questions
    from maccap.world.config import WorldConfig
    from maccap.world.scene import encode_png, render_scene, sample_scene

    rng = np.random.default_rng(seed)
    cfg = WorldConfig()

    def caption(scene):
        return " and ".join(f"a {o['size']} {o['colour']} {o['shape']}" for o in scene) + "."

    corpus = [caption(sample_scene(rng, cfg)) for _ in range(n_corpus)]
    (root / "images" / "test").mkdir(parents=True)
    entries, questions, annotations = [], [], []
    for i in range(n_test):
        scene = sample_scene(rng, cfg)
        name = f"test_{i:03d}.png"
        (root / "images" / "test" / name).write_bytes(encode_png(render_scene(scene, 64, rng)))
        image_id = 3_000_000 + i
        entries.append({"split": "test", "image_name": name, "file_path": "test", "image_id": image_id,
                        "captions": [caption(scene)] * 5, "scene": scene, "caption_objects": [[0]] * 5})
        for k, (q, a, qt, at) in enumerate(_toy_vqa(scene, image_id)):
            qid = image_id * 10 + k
            questions.append({"image_id": image_id, "question": q, "question_id": qid})
            answers = [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]
            annotations.append({"question_id": qid, "image_id": image_id, "answer_type": at, "question_type": qt,
                                "multiple_choice_answer": a, "answers": answers})
    (root / "captions_test.json").write_text(json.dumps(entries))
    (root / "corpus_train.json").write_text(json.dumps(corpus))
    write_questions(root / "vqa" / "questions_test.json", questions)
    write_annotations(root / "vqa" / "annotations_test.json", annotations)
    return root


def _tiny_world(root):
    """The world generator's tiny preset, shrunk further."""
    import dataclasses

    from maccap.world import WorldConfig, generate_world

    cfg = dataclasses.replace(WorldConfig.preset("tiny"), n_clip=8, n_val=4, n_test=6, n_corpus=12)
    generate_world(root, 0, cfg, progress=False)
    return root


@pytest.fixture(scope="module")
def task_setup(tmp_path_factory):
    from safetensors.torch import save_file

    from maccap.backbones import _open_clip

    torch.manual_seed(0)
    model = _open_clip().create_model("qs-rn", pretrained=None)
    path = tmp_path_factory.mktemp("bb") / "qs-rn-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    world = _tiny_world(tmp_path_factory.mktemp("world"))
    params = {"lm": "tiny-gpt2", "max_questions": 9, "batch_size": 8,
              "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup_iters": 1, "val_images": 0,
                        "aligner": {"n_queries": 2, "n_layers": 1, "n_heads": 4, "ffn_dim": 32}}}
    return f"qs-rn@{path}", world, params, tmp_path_factory.mktemp("work")


def _ctx(task_setup, run_dir, mode: str, method: str = "maccap", **extra):
    from benchmark.store import RunKey
    from benchmark.tasks import RunContext

    backbone, world, params, work = task_setup
    key = RunKey("test", "vqa", method, backbone, 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(key=key, run_dir=run_dir, work_dir=work, data_dir=world, dataset="tiny",
                      params={**params, "mode": mode, **extra}, train_seed=0, eval_seed=1, progress=False)


def test_task_end_to_end_all_modes(task_setup, tmp_path):
    from benchmark.tasks import load_tasks
    from maccap.metrics.vqa import read_annotations, read_results, vqa_accuracy

    task = load_tasks().get("vqa")
    outs = {}
    for mode in ("prefix", "caption", "no-image"):
        out = task(_ctx(task_setup, tmp_path / mode, mode))
        outs[mode] = out
        assert out.counts["questions"] == 9 and len(out.items) == 9
        assert 0.0 <= out.metrics["vqa_acc"] <= 1.0
        assert any(k.startswith("vqa_acc/qtype/") for k in out.metrics)
        assert any(k.count("/") == 1 for k in out.metrics)  # per answer type
        answers = read_results(tmp_path / mode / out.artifacts["vqa_results"])
        assert answers == {it["question_id"]: it["answer"] for it in out.items}
        anns = read_annotations(task_setup[1] / "vqa" / "annotations_test.json")
        wanted = {it["question_id"] for it in out.items}
        rescored = vqa_accuracy(answers, [a for a in anns if a["question_id"] in wanted])
        assert rescored.overall == pytest.approx(out.metrics["vqa_acc"])
        for it in out.items:
            assert len(it["gold"]) == 10 and 0.0 <= it["accuracy"] <= 1.0 and it["question"]
        assert out.extra["mode"] == mode
    # one captioner, trained once, serves every mode
    assert len({o.weights["captioner_key"] for o in outs.values()}) == 1
    assert all(it["context"] for it in outs["caption"].items)
    assert all(it["context"] is None for it in outs["prefix"].items)


def test_task_rejects_bad_question_files_and_params(task_setup, tmp_path):
    import json
    import shutil

    from benchmark.tasks import load_tasks

    task = load_tasks().get("vqa")
    backbone, world, params, work = task_setup
    bad = tmp_path / "bad"
    shutil.copytree(world, bad)
    qfile = bad / "vqa" / "questions_test.json"
    data = json.loads(qfile.read_text())
    del data["questions"][0]["question"]
    qfile.write_text(json.dumps(data))
    ctx = _ctx((backbone, bad, params, work), tmp_path / "run", "no-image")
    with pytest.raises(UserError, match=r"questions_test\.json.*question"):
        task(ctx)
    qfile.write_text("{not json")
    with pytest.raises(UserError, match="questions_test.json"):
        task(ctx)
    with pytest.raises(UserError, match="not found"):
        task(_ctx(task_setup, tmp_path / "run", "no-image", split="nosuch"))
    with pytest.raises(UserError, match="num_beam"):
        task(_ctx(task_setup, tmp_path / "run", "no-image", num_beam=3))
    with pytest.raises(UserError, match="mode"):
        task(_ctx(task_setup, tmp_path / "run", "blind"))


def test_cli_writes_result_and_official_file(task_setup, tmp_path):
    import yaml
    from click.testing import CliRunner

    from benchmark.cli import cli
    from benchmark.store import read_result
    from maccap.metrics.vqa import read_results

    backbone, world, params, work = task_setup
    cfg = tmp_path / "vqa.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in params.items() if k != "max_questions"}))
    res = tmp_path / "results"
    out = CliRunner().invoke(cli, ["vqa", "--backbone", backbone, "--method", "maccap", "--world", str(world),
                                   "--mode", "no-image", "--config", str(cfg), "--work-dir", str(work),
                                   "--results", str(res), "--max-questions", "4", "--no-progress"])
    assert out.exit_code == 0, out.output
    results = list(res.rglob("result.json"))
    assert len(results) == 1 and "vqa-no-image" in str(results[0])
    r = read_result(results[0])
    assert r["status"] == "ok" and r["counts"]["questions"] == 4 and "vqa_acc" in r["metrics"]
    assert len(read_results(results[0].parent / "vqa_results.json")) == 4
    assert "vqa_acc:" in out.output


# ------------------------------------------------------------------------------------------ LM pre-training text

def _toy_questions(scene, rng, n):
    out = []
    for _ in range(n):
        o = scene[int(rng.integers(len(scene)))]
        kind = int(rng.integers(3))
        if kind == 0:
            out.append({"question": f"what colour is the {o['shape']}?", "multiple_choice_answer": o["colour"]})
        elif kind == 1:
            out.append({"question": "how many objects are there?", "answers": [str(len(scene))] * 10})
        else:
            out.append({"question": f"is there a {o['colour']} {o['shape']}?", "answer": "yes"})
    return out


def _toy_captions(scene, rng, n):
    return [" and ".join(f"a {o['colour']} {o['shape']}" for o in scene) + "."] * n


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    return _write_toy_world(tmp_path_factory.mktemp("toy"), n_test=6, n_corpus=30)


def test_lm_corpus_with_the_world_generators(task_setup):
    """The default generators are the world's: its question kinds, true answers, its caption grammar."""
    from maccap.lm import words
    from maccap.lm_corpus import lm_pretraining_corpus
    from maccap.train import load_corpus_texts

    world = task_setup[1]
    corpus, contexts = lm_pretraining_corpus(world, seed=3, n_qa=60)
    n_captions = len(load_corpus_texts(world))
    qa = corpus[n_captions:]
    assert len(qa) == 60 and qa == lm_pretraining_corpus(world, seed=3, n_qa=60)[0][-60:]
    assert contexts[:n_captions] == [None] * n_captions  # a caption's context is its own words
    for text, caption in zip(qa, contexts[n_captions:]):  # a QA text's context is a caption of its scene
        assert caption and "Question:" not in caption
        assert text.startswith("Question: ") or text.startswith(caption + " Question: ")
    asked = " ".join(qa).lower()
    for phrase in ("what colo", "how many", "short answer: yes", "short answer: no"):
        assert phrase in asked, phrase
    with_caption = [t for t in qa if not t.startswith("Question: ")]
    assert with_caption and all(len(words(t)) <= 23 for t in with_caption)


def test_lm_corpus_cache_returns_the_drawn_texts_without_drawing_again(task_setup, tmp_path, monkeypatch):
    from maccap import lm_corpus

    world = task_setup[1]
    fresh = lm_corpus.lm_pretraining_corpus(world, seed=5, n_qa=40)
    assert lm_corpus.lm_pretraining_corpus(world, seed=5, n_qa=40, cache_dir=tmp_path) == fresh
    assert len(list(tmp_path.glob("qa-texts-*.json"))) == 1

    def no_drawing(*a, **k):
        raise AssertionError("the cached QA texts should have been read")

    monkeypatch.setattr(lm_corpus, "qa_texts", no_drawing)
    assert lm_corpus.lm_pretraining_corpus(world, seed=5, n_qa=40, cache_dir=tmp_path) == fresh
    with pytest.raises(AssertionError):  # other options are another cache entry
        lm_corpus.lm_pretraining_corpus(world, seed=6, n_qa=40, cache_dir=tmp_path)
    next(tmp_path.glob("qa-texts-*.json")).write_text("{not json")
    monkeypatch.undo()
    assert lm_corpus.lm_pretraining_corpus(world, seed=5, n_qa=40, cache_dir=tmp_path) == fresh  # redrawn


def test_lm_corpus_is_deterministic_disjoint_and_in_prompt_format(toy_world):
    from maccap.lm import words
    from maccap.lm_corpus import image_scene_signatures, lm_pretraining_corpus
    from maccap.train import load_corpus_texts
    from maccap.world.scene import scene_signature

    seen = []

    def recording(scene, rng, n):
        seen.append(scene_signature(scene))
        return _toy_questions(scene, rng, n)

    kw = dict(questions_fn=recording, captions_fn=_toy_captions, max_tokens=23)
    corpus, contexts = lm_pretraining_corpus(toy_world, seed=0, n_qa=50, **kw)
    assert len(contexts) == len(corpus)
    captions = load_corpus_texts(toy_world)
    assert corpus[:len(captions)] == captions and len(corpus) == len(captions) + 50
    qa = corpus[len(captions):]
    assert all(" Short answer: " in t and "Question: " in t for t in qa)
    assert any(t.startswith("Question: ") for t in qa) and any(not t.startswith("Question: ") for t in qa)
    assert all(len(words(t)) <= 23 for t in qa if not t.startswith("Question: "))
    taken = image_scene_signatures(toy_world)
    assert taken and not (set(seen) & taken)
    assert lm_pretraining_corpus(toy_world, seed=0, n_qa=50, questions_fn=_toy_questions,
                                 captions_fn=_toy_captions) == (corpus, contexts)
    assert lm_pretraining_corpus(toy_world, seed=1, n_qa=50, questions_fn=_toy_questions,
                                 captions_fn=_toy_captions)[0] != corpus
    assert lm_pretraining_corpus(toy_world, seed=0, n_qa=0) == (captions, [None] * len(captions))
    with pytest.raises(UserError, match="n_qa"):
        lm_pretraining_corpus(toy_world, seed=0, n_qa=-1)


@pytest.mark.slow
def test_vqa_runs_on_an_lm_pretrained_with_qa_text(toy_world, tmp_path):
    """The quickstart LM trained on captions + QA answers a colour question with a colour (its prior)."""
    from maccap.lm import QuickstartLMConfig, load_lm
    from maccap.lm_corpus import lm_pretraining_corpus
    from maccap.world.config import COLOUR_NAMES

    corpus, contexts = lm_pretraining_corpus(toy_world, seed=0, n_qa=400, questions_fn=_toy_questions,
                                             captions_fn=_toy_captions)
    cfg = QuickstartLMConfig(n_embd=32, n_layer=1, n_head=2, steps=80, batch_size=32, lr=5e-3, warmup=5)
    lm, tok = load_lm("quickstart", corpus=corpus, contexts=contexts, cache_dir=tmp_path, config=cfg)
    qs = [{"question_id": 1, "image_id": 0, "question": "what colour is the circle?"},
          {"question_id": 2, "image_id": 0, "question": "how many objects are there?"}]
    out = answer_questions(qs, VQAConfig(mode="no-image"), lm=lm, tokenizer=tok)
    assert out.answers[1] in COLOUR_NAMES, out.details
    assert out.answers[2].isdigit(), out.details
