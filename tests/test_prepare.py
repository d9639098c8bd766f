"""Preparation of real-format data (Karpathy files, reference layout, VQAv2) on tiny fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from benchmark.cli import cli
from maccap.datasets import prepare as prep
from maccap.datasets.karpathy import image_id_from_name, normalise_caption, read_caption_source, read_text_corpus
from maccap.datasets.prepare import prepare_coco, prepare_flickr30k, prepare_vqav2
from maccap.errors import UserError
from maccap.io import sha256_file
from realdata import SHARED, needs_shared

LEAK = "A man riding a wave on top of a surfboard."


def _img(path: Path, colour: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (colour, 255 - colour, 40)).save(path, fmt)


def _coco_image(i: int, split: str) -> dict:
    sub = "train2014" if split in ("train", "restval") else "val2014"
    return {"filepath": sub, "filename": f"COCO_{sub}_{i:012d}.jpg", "imgid": i, "cocoid": i, "split": split,
            "sentids": [10 * i, 10 * i + 1],
            "sentences": [{"raw": f"Image {i} shows a thing number one.", "tokens": ["image", str(i)]},
                          {"raw": f"A second caption of image {i} ", "tokens": ["a", "second"]}]}


def _coco_fixture(tmp_path: Path, leak: bool = True) -> tuple[Path, Path]:
    splits = {1: "train", 2: "train", 3: "restval", 4: "val", 5: "val", 6: "test", 7: "test"}
    images = [_coco_image(i, s) for i, s in splits.items()]
    images[-1]["sentences"].append({"raw": LEAK, "tokens": LEAK.lower().rstrip(".").split()})
    if leak:  # the same test caption, differently cased and spaced, among the training captions
        images[0]["sentences"].append({"raw": "a man  riding a WAVE on top of a surfboard", "tokens": []})
    kfile = tmp_path / "raw" / "karpathy" / "dataset_coco.json"
    kfile.parent.mkdir(parents=True)
    kfile.write_text(json.dumps({"images": images, "dataset": "coco"}))
    root = tmp_path / "raw" / "coco2014"
    for i, s in splits.items():
        if s in ("val", "test"):
            _img(root / "val2014" / f"COCO_val2014_{i:012d}.jpg", 30 * i)
    return kfile, root


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_prepare_coco_layout_corpus_and_leaks(tmp_path):
    kfile, root = _coco_fixture(tmp_path)
    out = tmp_path / "data"
    rep = prepare_coco(kfile, root, out, progress=False)
    val = json.loads((out / "captions_val.json").read_text())
    test = json.loads((out / "captions_test.json").read_text())
    assert [e["image_id"] for e in val] == [4, 5] and [e["image_id"] for e in test] == [6, 7]
    assert val[0] == {"split": "val", "image_name": "COCO_val2014_000000000004.jpg", "file_path": "val2014",
                      "image_id": 4, "captions": ["Image 4 shows a thing number one.", "A second caption of image 4"]}
    corpus = json.loads((out / "corpus_train.json").read_text())
    assert len(corpus) == 6  # 3 train/restval images x 2 captions; the planted leak dropped
    assert "Image 3 shows a thing number one." in corpus  # restval belongs to training
    assert not any("image 4" in c.lower() for c in corpus)
    assert rep.leaks.found == 1 and rep.leaks.dropped == 1
    assert rep.leaks.examples == [normalise_caption(LEAK)]
    link = out / "images" / "val2014" / "COCO_val2014_000000000006.jpg"
    assert link.is_symlink() and link.resolve() == (root / "val2014" / link.name).resolve()
    assert not (out / "images" / "train2014").exists()  # text-only training: no train images needed
    m = _manifest(out)
    assert m["prepare"]["coco"]["leaks"]["found"] == 1
    assert set(m["files"]) == {"captions_val.json", "captions_test.json", "corpus_train.json",
                               *(f"images/val2014/COCO_val2014_{i:012d}.jpg" for i in (4, 5, 6, 7))}
    for rel, digest in m["files"].items():
        assert sha256_file(out / rel) == digest
    assert str(kfile.resolve()) in m["prepare"]["coco"]["sources"]


def test_keep_leaks_reports_but_keeps(tmp_path):
    kfile, root = _coco_fixture(tmp_path)
    rep = prepare_coco(kfile, root, tmp_path / "d", drop_leaks=False, progress=False)
    assert rep.leaks.found == 1 and rep.leaks.dropped == 0
    assert len(json.loads((tmp_path / "d" / "corpus_train.json").read_text())) == 7


def test_no_leak_found_when_none_planted(tmp_path):
    kfile, root = _coco_fixture(tmp_path, leak=False)
    assert prepare_coco(kfile, root, tmp_path / "d", progress=False).leaks.found == 0


def test_copy_and_none_link_modes(tmp_path):
    kfile, root = _coco_fixture(tmp_path)
    prepare_coco(kfile, root, tmp_path / "c", link="copy", progress=False)
    f = tmp_path / "c" / "images" / "val2014" / "COCO_val2014_000000000004.jpg"
    assert f.is_file() and not f.is_symlink()
    with Image.open(f) as im:
        assert im.size == (8, 6)
    rep = prepare_coco(kfile, root, tmp_path / "n", link="none", progress=False)
    assert not (tmp_path / "n" / "images").exists()
    assert _manifest(tmp_path / "n")["config"]["coco"]["images_root"] == str(root.resolve())
    assert rep.images_root == str(root.resolve())


def test_cc3m_corpus_and_leak_from_it(tmp_path):
    kfile, root = _coco_fixture(tmp_path, leak=False)
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_text(f"a dog on the beach\thttp://x/1.jpg\n{LEAK.upper()}\thttp://x/2.jpg\n\nsunset over hills\thttp://x/3\n")
    rep = prepare_coco(kfile, root, tmp_path / "d", cc3m=tsv, train_corpus=False, progress=False)
    assert json.loads((tmp_path / "d" / "corpus_train.json").read_text()) == ["a dog on the beach", "sunset over hills"]
    assert rep.corpus_sources == {"cc3m": 3} and rep.leaks.found == 1


@needs_shared
def test_reference_layout_slice_from_shared(tmp_path):
    ref = json.loads((SHARED / "mscoco_test.json").read_text())[:3]
    val = json.loads((SHARED / "mscoco_val.json").read_text())[:2]
    (tmp_path / "t.json").write_text(json.dumps(ref))
    (tmp_path / "v.json").write_text(json.dumps(val))
    for k, e in enumerate(ref + val):
        _img(tmp_path / "imgs" / e["file_path"] / e["image_name"], 20 * k, "PNG" if k % 2 else "JPEG")
    rep = prepare_coco([tmp_path / "t.json", tmp_path / "v.json"], tmp_path / "imgs", tmp_path / "d", progress=False)
    test = json.loads((tmp_path / "d" / "captions_test.json").read_text())
    assert test[0]["image_id"] == 391895 and test[0]["captions"] == ref[0]["captions"]
    assert rep.splits == {"val": {"images": 2, "captions": 10}, "test": {"images": 3, "captions": 15}}
    assert json.loads((tmp_path / "d" / "corpus_train.json").read_text()) == []  # no train split in these files


def test_karpathy_plus_reference_overlap_is_merged(tmp_path):
    kfile, root = _coco_fixture(tmp_path, leak=False)
    data = json.loads(kfile.read_text())
    ref = [{"split": "test", "image_name": im["filename"], "file_path": im["filepath"],
            "captions": [s["raw"].strip() for s in im["sentences"]]} for im in data["images"] if im["split"] == "test"]
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    rep = prepare_coco([kfile, tmp_path / "ref.json"], root, tmp_path / "d", progress=False)
    assert rep.splits["test"]["images"] == 2


@needs_shared
def test_flickr_reference_slice_without_file_path(tmp_path):
    ref = json.loads((SHARED / "flickr30k_test.json").read_text())[:2]
    (tmp_path / "f.json").write_text(json.dumps(ref))
    for k, e in enumerate(ref):
        _img(tmp_path / "flickr30k-images" / e["image_name"], 50 * k)
    prepare_flickr30k(tmp_path / "f.json", tmp_path / "flickr30k-images", tmp_path / "d", progress=False)
    entry = json.loads((tmp_path / "d" / "captions_test.json").read_text())[0]
    assert entry["image_id"] == 1007129816 and "file_path" not in entry
    assert (tmp_path / "d" / "images" / "1007129816.jpg").is_symlink()
    assert _manifest(tmp_path / "d")["name"] == "flickr30k"


def test_missing_images_error_or_allowed(tmp_path):
    kfile, root = _coco_fixture(tmp_path)
    (root / "val2014" / "COCO_val2014_000000000005.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of 4 coco images are missing.*COCO_val2014_000000000005.jpg.*--allow-missing 1"):
        prepare_coco(kfile, root, tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "manifest.json").exists()
    rep = prepare_coco(kfile, root, tmp_path / "d", allow_missing=1, progress=False)
    assert rep.missing_images == ["val2014/COCO_val2014_000000000005.jpg"]
    assert [e["image_id"] for e in json.loads((tmp_path / "d" / "captions_val.json").read_text())] == [4]


def _write(tmp_path: Path, obj) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d.pop("images"), r"missing field 'images'"),
    (lambda d: d.update(images={"a": 1}), r"field images must be a list"),
    (lambda d: d["images"][2].update(sentences="a caption"), r"images\[2\]\.sentences must be a list"),
    (lambda d: d["images"][2].update(sentences=[]), r"images\[2\]\.sentences must be a non-empty list"),
    (lambda d: d["images"][1]["sentences"][0].update(raw="", tokens=None), r"images\[1\]\.sentences\[0\]\.raw"),
    (lambda d: d["images"][3].update(split="training"), r"images\[3\]\.split must be one of"),
    (lambda d: d["images"][4].pop("filename"), r"images\[4\] is missing field 'filename'"),
    (lambda d: d["images"][4].update(cocoid="5"), r"images\[4\]\.cocoid must be an integer"),
    (lambda d: d["images"][5].update(cocoid=4), r"duplicated image id 4 .*images\[3\].*images\[5\]"),
    (lambda d: d["images"][5].update(filename=d["images"][3]["filename"], filepath="val2014"),
     r"duplicated image 'val2014/COCO_val2014_000000000004.jpg' \(images\[3\] and images\[5\]\)"),
])
def test_malformed_karpathy_file(tmp_path, mutate, pattern):
    kfile, root = _coco_fixture(tmp_path)
    data = json.loads(kfile.read_text())
    mutate(data)
    bad = _write(tmp_path, data)
    with pytest.raises(UserError, match=pattern) as ei:
        prepare_coco(bad, root, tmp_path / "d", progress=False)
    assert str(bad) in str(ei.value)
    assert not (tmp_path / "d" / "manifest.json").exists()


@pytest.mark.parametrize("obj, pattern", [
    ("{not json", r"malformed JSON"),
    ("", r"is empty"),
    ('"just a string"', r"expected a JSON object with 'images'"),
    ([{"split": "test", "image_name": "x_1.jpg"}], r"entry \[0\]\.captions must be a non-empty list"),
    ([{"split": "test", "image_name": "x_1.jpg", "captions": ["ok", 3]}], r"entry \[0\]\.captions\[1\]"),
    ([{"split": "test", "image_name": "nodigits.jpg", "captions": ["ok"]}], r"holds no digits"),
    ([{"split": "test", "image_name": "../../x_1.jpg", "captions": ["ok"]}], r"entry \[0\]\.image_name must be a relative"),
    ([{"split": "test", "image_name": "x_1.jpg", "file_path": "/etc", "captions": ["ok"]}], r"\.file_path must be a relative"),
    ([{"split": "test", "image_name": "a_1.jpg", "captions": ["x"]},
      {"split": "test", "image_name": "b_1.jpg", "captions": ["y"]}], r"duplicated image id 1"),
])
def test_malformed_reference_file(tmp_path, obj, pattern):
    bad = _write(tmp_path, obj)
    with pytest.raises(UserError, match=pattern) as ei:
        read_caption_source(bad)
    assert str(bad) in str(ei.value)


def test_image_ids_never_cross_splits(tmp_path):
    kfile, root = _coco_fixture(tmp_path)
    # a second file claims a test image for training
    other = [{"split": "train", "image_name": "COCO_val2014_000000000006.jpg", "file_path": "val2014", "captions": ["x"]}]
    (tmp_path / "o.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match="split 'test'.*split 'train'.*one split only"):
        prepare_coco([kfile, tmp_path / "o.json"], root, tmp_path / "d", progress=False)
    # same id under another name in another split
    other = [{"split": "train", "image_name": "COCO_train2014_000000000007.jpg", "file_path": "train2014", "captions": ["x"]}]
    (tmp_path / "o.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match="image id 7 .*across splits 'test'/'train'"):
        prepare_coco([kfile, tmp_path / "o.json"], root, tmp_path / "d", progress=False)


def test_images_required_unless_link_none(tmp_path):
    kfile, _root = _coco_fixture(tmp_path)
    with pytest.raises(UserError, match="--images is required"):
        prepare_coco(kfile, None, tmp_path / "d", progress=False)
    with pytest.raises(UserError, match="is not a directory"):
        prepare_coco(kfile, tmp_path / "nowhere", tmp_path / "d", progress=False)


def test_interrupted_preparation_leaves_no_manifest_then_recovers(tmp_path, monkeypatch):
    kfile, root = _coco_fixture(tmp_path)
    out = tmp_path / "d"
    prepare_coco(kfile, root, out, progress=False)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_hash_files", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_coco(kfile, root, out, progress=False)
    assert not (out / "manifest.json").exists()  # unfinished directories never look complete
    monkeypatch.undo()
    prepare_coco(kfile, root, out, progress=False)
    assert (out / "manifest.json").exists() and not (out / ".manifest.json.in-progress").exists()


def test_coco_and_flickr_do_not_share_a_directory(tmp_path):
    kfile, root = _coco_fixture(tmp_path)
    prepare_coco(kfile, root, tmp_path / "d", progress=False)
    with pytest.raises(UserError, match="already holds coco captions"):
        prepare_flickr30k(kfile, root, tmp_path / "d", progress=False)


def test_helpers():
    assert image_id_from_name("COCO_val2014_000000391895.jpg") == 391895
    assert image_id_from_name("1007129816.jpg") == 1007129816
    assert normalise_caption("  A  Dog\tRuns. ") == "a dog runs"


def test_text_corpus_formats(tmp_path):
    (tmp_path / "c.txt").write_text("one\n\n two  words \n")
    assert read_text_corpus(tmp_path / "c.txt") == ["one", "two words"]
    (tmp_path / "c.json").write_text('["a", "b"]')
    assert read_text_corpus(tmp_path / "c.json") == ["a", "b"]
    (tmp_path / "h.tsv").write_text("caption\turl\nx\ty\n")
    assert read_text_corpus(tmp_path / "h.tsv") == ["x"]
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(UserError, match="holds no captions"):
        read_text_corpus(tmp_path / "e.txt")


# ----------------------------------------------------------------------------------------------- VQA

def _vqa_fixture(tmp_path: Path, image_ids=(4, 6, 9)) -> tuple[Path, Path]:
    qs, anns = [], []
    for k, iid in enumerate(image_ids):
        for j in range(2):
            qid = iid * 1000 + j
            qs.append({"image_id": iid, "question": f"What colour is thing {k}?", "question_id": qid})
            anns.append({"question_id": qid, "image_id": iid, "answer_type": "other", "question_type": "what color",
                         "multiple_choice_answer": "red",
                         "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": a + 1} for a in range(10)]})
    qp, ap = tmp_path / "vq.json", tmp_path / "va.json"
    qp.write_text(json.dumps({"data_subtype": "val2014", "questions": qs}))
    ap.write_text(json.dumps({"data_subtype": "val2014", "annotations": anns}))
    return qp, ap


def test_prepare_vqav2_shares_directory_with_coco(tmp_path):
    kfile, root = _coco_fixture(tmp_path)
    _img(root / "val2014" / "COCO_val2014_000000000009.jpg", 99)
    out = tmp_path / "d"
    prepare_coco(kfile, root, out, progress=False)
    qp, ap = _vqa_fixture(tmp_path, image_ids=(4, 5, 9))
    rep = prepare_vqav2(qp, ap, root, out, "val", progress=False)
    # image 9 is not a Karpathy val image: the VQA task could not find it through captions_val.json
    assert rep.splits["val"] == {"images": 2, "questions": 4} and rep.questions_outside_captions == 2
    qs = json.loads((out / "vqa" / "questions_val.json").read_text())
    assert qs["data_subtype"] == "val2014"
    assert qs["questions"][0]["file_path"] == "val2014" and qs["questions"][0]["image_name"] == "COCO_val2014_000000000004.jpg"
    anns = json.loads((out / "vqa" / "annotations_val.json").read_text())["annotations"]
    assert {a["image_id"] for a in anns} == {4, 5}
    m = _manifest(out)
    assert m["name"] == "coco+vqav2" and set(m["config"]) == {"coco", "vqav2"}
    assert {"captions_test.json", "vqa/questions_val.json", "vqa/annotations_val.json"} <= set(m["files"])
    for rel, digest in m["files"].items():
        assert sha256_file(out / rel) == digest
    rep = prepare_vqav2(qp, ap, root, out, "val", restrict_to_captions=False, progress=False)
    assert rep.splits["val"]["questions"] == 6
    assert (out / "images" / "val2014" / "COCO_val2014_000000000009.jpg").is_symlink()
    with pytest.raises(UserError, match="none of the 4 VQA questions asks about an image of .*captions_test.json"):
        prepare_vqav2(*_vqa_fixture(tmp_path, image_ids=(4, 9)), root, out, "test", progress=False)


def test_vqav2_malformed_and_missing(tmp_path):
    qp, ap = _vqa_fixture(tmp_path)
    root = tmp_path / "imgs"
    for iid in (4, 6):
        _img(root / "val2014" / f"COCO_val2014_{iid:012d}.jpg", iid)
    with pytest.raises(UserError, match="1 of 3 VQAv2 images are missing"):
        prepare_vqav2(qp, ap, root, tmp_path / "d", progress=False)
    rep = prepare_vqav2(qp, ap, root, tmp_path / "d", allow_missing=1, progress=False)
    assert rep.splits["test"] == {"images": 2, "questions": 4}
    anns = json.loads(ap.read_text())
    anns["annotations"][0]["answers"] = anns["annotations"][0]["answers"][:9]
    ap.write_text(json.dumps(anns))
    with pytest.raises(UserError, match=r"annotations\[0\]\.answers must hold 10"):
        prepare_vqav2(qp, ap, root, tmp_path / "e", allow_missing=1, progress=False)
    anns["annotations"] = anns["annotations"][1:]
    ap.write_text(json.dumps(anns))
    with pytest.raises(UserError, match="1 questions .* have no annotation"):
        prepare_vqav2(qp, ap, root, tmp_path / "e", allow_missing=1, progress=False)


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_prepare_coco_with_root_defaults(tmp_path):
    _kfile, _root = _coco_fixture(tmp_path)
    res = CliRunner().invoke(cli, ["data", "prepare", "coco", "--root", str(tmp_path / "raw"),
                                   "--out", str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "leak check: 1 training captions equal a val/test caption, 1 dropped" in res.output
    assert (tmp_path / "d" / "manifest.json").exists()


def test_cli_user_error_is_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["data", "prepare", "coco", "--root", str(tmp_path), "--out", str(tmp_path / "d")])
    assert isinstance(res.exception, UserError) and "caption file not found" in str(res.exception)


def test_prepared_directory_passes_the_project_validator(tmp_path):
    from maccap.data import load_corpus, load_image, load_split, load_vqa, validate_data_dir

    kfile, root = _coco_fixture(tmp_path)
    _img(root / "val2014" / "COCO_val2014_000000000009.jpg", 99)
    out = tmp_path / "d"
    prepare_coco(kfile, root, out, progress=False)
    prepare_vqav2(*_vqa_fixture(tmp_path, image_ids=(6, 7)), root, out, "test", progress=False)
    assert validate_data_dir(out) == []
    test = load_split(out, "test")
    assert [r.image_id for r in test] == [6, 7] and load_image(test[0].path).size == (8, 6)
    assert len(load_corpus(out)) == 6
    assert len(load_vqa(out, "test")[0]) == 4
    # the manifest is what the validator checks: a changed file is reported
    (out / "captions_val.json").write_text((out / "captions_val.json").read_text().replace("Image 4", "Image 5"))
    assert any("captions_val.json: checksum mismatch" in p for p in validate_data_dir(out, check_images=False))


@needs_shared
def test_evaluation_only_directory_is_flagged_by_the_validator(tmp_path):
    from maccap.data import validate_data_dir

    ref = json.loads((SHARED / "flickr30k_test.json").read_text())[:2]
    (tmp_path / "f.json").write_text(json.dumps(ref))
    prepare_flickr30k(tmp_path / "f.json", None, tmp_path / "d", link="none", progress=False)
    problems = validate_data_dir(tmp_path / "d", check_images=False)
    assert problems == [f"training corpus {tmp_path / 'd' / 'corpus_train.json'} is an empty list"]
