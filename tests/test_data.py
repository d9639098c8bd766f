"""Data readers: every bad input is a one-line UserError naming the file and what was expected."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from maccap.data import (load_corpus, load_image, load_karpathy, load_split, load_vqa, split_hash,
                         validate_data_dir, verify_manifest)
from maccap.errors import UserError
from maccap.world import WorldConfig, ensure_world
from realdata import SHARED, needs_shared



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "world"
    ensure_world(out, seed=1, config=WorldConfig.preset("tiny"), progress=False)
    return out


@pytest.fixture
def copy(world, tmp_path):
    dst = tmp_path / "w"
    shutil.copytree(world, dst)
    return dst


def test_clean_world_validates(world):
    assert validate_data_dir(world) == []
    s = load_split(world, "test", check_images=True)
    assert len(s) == WorldConfig.preset("tiny").n_test
    assert len(s.references()) == len(s)
    qs, anns = load_vqa(world, "val")
    assert len(qs) == len(anns)


def test_ensure_world_reuses(world):
    before = (world / "manifest.json").stat().st_mtime_ns
    ensure_world(world, seed=1, config=WorldConfig.preset("tiny"), progress=False)
    assert (world / "manifest.json").stat().st_mtime_ns == before


def test_interrupted_world_is_regenerated(copy):
    (copy / "manifest.json").unlink()
    ensure_world(copy, seed=1, config=WorldConfig.preset("tiny"), progress=False)
    assert verify_manifest(copy) == []


def test_checksum_mismatch_is_named(copy):
    img = next((copy / "images" / "test").iterdir())
    img.write_bytes(img.read_bytes()[:-10] + b"0123456789")
    problems = verify_manifest(copy)
    assert len(problems) == 1 and img.name in problems[0] and "checksum" in problems[0]
    assert split_hash(copy, "test") == split_hash(copy, "test")


@pytest.mark.parametrize("mutate,msg", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3]), "corrupt or truncated"),
    (lambda p: p.write_bytes(b"not an image at all"), "not a readable image"),
    (lambda p: p.unlink(), "not found"),
])
def test_bad_images(copy, mutate, msg):
    img = next((copy / "images" / "test").iterdir())
    mutate(img)
    with pytest.raises(UserError, match=msg) as e:
        load_image(img)
    assert img.name in str(e.value)
    assert any(img.name in p for p in validate_data_dir(copy))


def test_greyscale_and_cmyk_become_rgb(tmp_path):
    for mode in ("L", "CMYK", "P", "RGBA"):
        p = tmp_path / f"{mode}.png" if mode != "CMYK" else tmp_path / "c.jpg"
        Image.new(mode, (8, 8)).save(p)
        assert load_image(p).mode == "RGB"


def test_huge_image_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("maccap.data.MAX_IMAGE_PIXELS", 100)
    p = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(p)
    with pytest.raises(UserError, match="more than 100 pixels"):
        load_image(p)


@pytest.mark.parametrize("content,msg", [
    ({"not": "a list"}, "expected a JSON list"),
    ([{"image_name": "a.png"}], "'captions' must be a non-empty list"),
    ([{"image_name": "a.png", "captions": ["ok", 3]}], r"captions\[1\] is int"),
    ([{"image_name": "a.png", "captions": ["  "]}], r"captions\[0\] is empty"),
    ([{"image_name": "a.png", "captions": ["x" * 600]}], "more than 500"),
    ([{"image_name": "1.png", "captions": ["a"]}, {"image_name": "1.png", "captions": ["b"]}], "appears twice"),
    ([{"image_name": "1.png", "image_id": 5, "captions": ["a"]},
      {"image_name": "2.png", "image_id": 5, "captions": ["b"]}], "image_id 5 appears twice"),
    ([{"captions": ["a"]}], "'image_name' must be"),
    (["oops"], "expected an object"),
])
def test_bad_caption_files(tmp_path, content, msg):
    p = tmp_path / "captions_test.json"
    p.write_text(json.dumps(content))
    with pytest.raises(UserError, match=msg) as e:
        load_karpathy(p)
    assert str(p) in str(e.value)


def test_non_utf8_caption_file(tmp_path):
    p = tmp_path / "captions_test.json"
    p.write_bytes('[{"image_name": "a.png", "captions": ["caf\xe9"]}]'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_karpathy(p)


@pytest.mark.parametrize("content,msg", [([], "empty list"), (["a", ""], "item 1: empty"), ([1], "item 0"),
                                         ({"a": 1}, "expected a JSON list")])
def test_bad_corpus(tmp_path, content, msg):
    (tmp_path / "corpus_train.json").write_text(json.dumps(content))
    with pytest.raises(UserError, match=msg):
        load_corpus(tmp_path)


def test_missing_split_names_what_exists(world):
    with pytest.raises(UserError, match="splits here: clip, test, val"):
        load_split(world, "train")


@needs_shared
def test_reference_karpathy_file():
    s = load_karpathy(SHARED / "mscoco_test.json", split="test")
    assert len(s) == 5000 and sum(len(r.captions) for r in s.records) == 25010
    assert s.records[0].image_id == 391895
