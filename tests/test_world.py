"""The quickstart world: determinism, caption/scene consistency, VQA answers, layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maccap.world import (WorldConfig, caption_is_true, generate_world, item_rng, parse_caption, render_scene,
                          sample_scene, scene_captions, scene_from_caption, scene_questions)
from maccap.world.parse import relation_holds

CFG = WorldConfig()


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "world"
    generate_world(out, seed=3, config=WorldConfig.preset("tiny"), progress=False, workers=2)
    return out


def _scenes(n, split="clip", seed=0):
    for i in range(n):
        rng = item_rng(seed, split, i)
        scene = sample_scene(rng, CFG)
        yield scene, rng


def test_same_seed_same_bytes(tiny_world, tmp_path):
    again = tmp_path / "again"  # one process here, a pool of two for the fixture: the bytes do not care
    generate_world(again, seed=3, config=WorldConfig.preset("tiny"), progress=False, workers=1)
    m1 = json.loads((tiny_world / "manifest.json").read_text())
    m2 = json.loads((again / "manifest.json").read_text())
    assert m1 == m2
    for rel in list(m1["files"])[:50] + ["captions_test.json", "vqa/annotations_test.json"]:
        assert (tiny_world / rel).read_bytes() == (again / rel).read_bytes()
    other = tmp_path / "other"
    generate_world(other, seed=4, config=WorldConfig.preset("tiny"), progress=False)
    assert json.loads((other / "manifest.json").read_text())["hash"] != m1["hash"]


def test_deferred_clip_images_are_rendered_on_first_use_with_the_eager_bytes(tmp_path):
    from maccap.data import load_split, split_hash, verify_manifest

    cfg = WorldConfig.preset("tiny")
    lazy, eager = tmp_path / "lazy", tmp_path / "eager"
    generate_world(lazy, seed=5, config=cfg, progress=False, workers=1)
    generate_world(eager, seed=5, config=cfg, progress=False, workers=1, defer=())
    assert not list((lazy / "images" / "clip").glob("*.png"))
    for rel in ("captions_clip.json", "captions_test.json", "vqa/annotations_val.json", "corpus_train.json"):
        assert (lazy / rel).read_bytes() == (eager / rel).read_bytes()
    assert verify_manifest(lazy) == []
    records = load_split(lazy, "clip").records  # first use: rendered now (two processes)
    assert len(records) == cfg.n_clip and all(r.path.is_file() for r in records)
    assert all(r.path.read_bytes() == (eager / r.path.relative_to(lazy)).read_bytes() for r in records)
    assert not (lazy / "images" / "clip" / "deferred.json").exists()
    assert verify_manifest(lazy) == [] and split_hash(lazy, "clip") == split_hash(eager, "clip")
    records[3].path.write_bytes(b"not a png")  # the rendered split is checked like the rest
    assert any("checksum mismatch" in p for p in verify_manifest(lazy))


def test_layout_and_sizes(tiny_world):
    cfg = WorldConfig.preset("tiny")
    for split, n in (("clip", cfg.n_clip), ("val", cfg.n_val), ("test", cfg.n_test)):
        entries = json.loads((tiny_world / f"captions_{split}.json").read_text())
        assert len(entries) == n
        e = entries[0]
        assert set(e) >= {"split", "image_name", "file_path", "captions", "image_id", "scene", "caption_objects"}
        assert len(e["captions"]) == cfg.captions_per_image
        assert (tiny_world / "images" / e["file_path"] / e["image_name"]).exists() == (split != "clip")
    corpus = json.loads((tiny_world / "corpus_train.json").read_text())
    assert len(corpus) == cfg.n_corpus * cfg.captions_per_image and all(isinstance(c, str) for c in corpus)
    qs = json.loads((tiny_world / "vqa/questions_test.json").read_text())["questions"]
    anns = json.loads((tiny_world / "vqa/annotations_test.json").read_text())["annotations"]
    assert len(qs) == len(anns) > cfg.n_test * 2
    assert all(len(a["answers"]) == 10 for a in anns)
    assert len({q["question_id"] for q in qs}) == len(qs)


def test_every_caption_is_true_of_its_scene_and_names_real_objects():
    partial = total = 0
    for scene, rng in _scenes(600):
        caps, objs = scene_captions(scene, rng, 5)
        assert len(set(caps)) == 5
        for cap, idx in zip(caps, objs):
            assert caption_is_true(cap, scene), (cap, scene)
            assert all(0 <= i < len(scene) for i in idx)
            for m in parse_caption(cap)["mentions"]:
                assert any(m["colour"] in (None, o["colour"]) and m["shape"] in (None, o["shape"]) for o in scene)
            total += 1
            partial += len(idx) < len(scene)
    assert 0.25 < partial / total < 0.7  # many captions mention only part of the scene


def test_captions_are_false_of_other_scenes():
    """The checker is not vacuous: captions of one scene are mostly false of another."""
    scenes = list(_scenes(200))
    false = sum(not caption_is_true(scene_captions(s, r, 1)[0][0], scenes[(i + 1) % 200][0])
                for i, (s, r) in enumerate(scenes))
    assert false > 120


def test_relations_and_counts_parse():
    scene = [{"shape": "circle", "colour": "red", "size": "small", "hpos": "left", "vpos": "top"},
             {"shape": "star", "colour": "blue", "size": "large", "hpos": "right", "vpos": "top"}]
    assert caption_is_true("A red circle to the left of a blue star.", scene)
    assert not caption_is_true("A red circle to the right of a blue star.", scene)
    assert caption_is_true("Two shapes: a red circle and a blue star.", scene)
    assert not caption_is_true("Three shapes on a light background.", scene)
    assert not caption_is_true("A green circle.", scene)
    assert caption_is_true("A small red circle in the top left.", scene)
    assert not caption_is_true("A small red circle in the center.", scene)
    assert relation_holds("to the left of", scene[0], scene[1])


def test_vqa_answers_are_true():
    for scene, rng in _scenes(300, "val"):
        for q in scene_questions(scene, rng, 4):
            text, ans = q["question"], q["answer"]
            if text.startswith("how many shapes") or text.startswith("how many objects"):
                assert ans == str(len(scene))
            elif text.startswith("is there a"):
                colour, shape = text.removeprefix("is there a ").rstrip("?").split()
                assert (ans == "yes") == any(o["colour"] == colour and o["shape"] == shape for o in scene)
            elif text.startswith("what color is the"):
                shape = text.split()[-1].rstrip("?")
                assert [o["colour"] for o in scene if o["shape"] == shape] == [ans]
            elif text.startswith("what shape is the"):
                colour = text.split()[4]
                assert [o["shape"] for o in scene if o["colour"] == colour] == [ans]
            assert q["answers"].count(q["answer"]) >= 5 and q["multiple_choice_answer"] == q["answer"] or \
                q["answers"].count(q["multiple_choice_answer"]) >= q["answers"].count(q["answer"])


def test_scene_from_caption_round_trip():
    rng = np.random.default_rng(0)
    for scene, r in _scenes(100, "test"):
        for cap in scene_captions(scene, r, 5)[0]:
            assert caption_is_true(cap, scene_from_caption(cap, rng))


def test_render_is_deterministic_and_shows_objects():
    scene = sample_scene(np.random.default_rng(1), CFG)
    a = np.asarray(render_scene(scene, 64, np.random.default_rng(2)))
    b = np.asarray(render_scene(scene, 64, np.random.default_rng(2)))
    assert a.shape == (64, 64, 3) and (a == b).all()
    x0, y0, x1, y1 = (int(v) for v in scene[0]["bbox"])
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    assert np.abs(a[cy, cx].astype(int) - a[1, 1].astype(int)).sum() > 60  # object differs from background
