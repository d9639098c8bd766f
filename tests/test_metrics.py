"""Caption metrics: exact agreement with pycocoevalcap, Java-free path, SPICE skipping, CLIP-S."""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

import pycocoevalcap.bleu.bleu as _bleu
from maccap.errors import UserError
from maccap.metrics import METRICS, clip_score, refclip_score, score_captions, with_prompt
from maccap.metrics import captions as cap_mod
from maccap.metrics.ptb import PUNCTUATIONS, find_java, ptb_tokenize, python_tokenize

KARPATHY = Path("/work/shared/data/karpathy/mscoco_test.json")
PKG_DIR = Path(_bleu.__file__).parent.parent
N_IMAGES = 50

needs_data = pytest.mark.skipif(not KARPATHY.is_file(), reason=f"reference captions not present at {KARPATHY}")
needs_java = pytest.mark.skipif(find_java() is None,
                                reason="java not on PATH (the Java-free path is tested separately)")


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def coco() -> tuple[dict[str, str], dict[str, list[str]]]:
    """One human caption of each of 50 COCO test images as the prediction, the other four as references."""
    rows = json.loads(KARPATHY.read_text())[:N_IMAGES]
    preds = {r["image_name"]: r["captions"][0] for r in rows}
    refs = {r["image_name"]: r["captions"][1:5] for r in rows}
    return preds, refs


@pytest.fixture(scope="module")
def ours(coco, tmp_path_factory):
    """Our wrapper with every metric, recording every process cwd and temp dir it uses."""
    preds, refs = coco
    seen_dirs: list[str] = []
    real_popen, real_mkstemp = subprocess.Popen, tempfile.mkstemp

    class RecordingPopen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs):
            seen_dirs.append(str(kwargs.get("cwd") or os.getcwd()))
            super().__init__(*args, **kwargs)

    def recording_mkstemp(*args, **kwargs):
        seen_dirs.append(str(kwargs.get("dir") or tempfile.gettempdir()))
        return real_mkstemp(*args, **kwargs)

    before = _tree(PKG_DIR)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", RecordingPopen)
        mp.setattr(tempfile, "mkstemp", recording_mkstemp)
        scores = score_captions(preds, refs, work_dir=tmp_path_factory.mktemp("metric_work"))
    return scores, seen_dirs, before, _tree(PKG_DIR)


@pytest.fixture(scope="module")
def reference_numbers(coco):
    """pycocoevalcap used the standard way: PTBTokenizer, then each scorer's compute_score."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds, refs = coco
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in preds.items()})
    out: dict[str, tuple] = {}
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"BLEU-{n + 1}"] = (bleu[n], bleu_per[n])
    meteor = Meteor()
    out["METEOR"] = meteor.compute_score(gts, res)
    del meteor
    out["ROUGE-L"] = Rouge().compute_score(gts, res)
    out["CIDEr-D"] = Cider().compute_score(gts, res)
    return list(res), out


@needs_data
@needs_java
def test_wrapper_matches_pycocoevalcap_exactly(ours, reference_numbers):
    scores, *_ = ours
    ids, ref = reference_numbers
    assert scores.tokenizer == "ptb"
    assert set(scores.metrics) == set(ref)
    for name, (corpus, per) in ref.items():
        assert scores.metrics[name] == float(corpus), name
        assert [scores.per_item[name][i] for i in ids] == [float(x) for x in per], name


@needs_data
@needs_java
def test_human_captions_score_in_human_range(ours):
    m = ours[0].metrics
    # a human caption against four other humans: COCO's published human scores are in these ranges
    assert 0.5 < m["CIDEr-D"] < 1.3
    assert 0.08 < m["BLEU-4"] < 0.35
    assert 0.15 < m["METEOR"] < 0.30
    assert 0.35 < m["ROUGE-L"] < 0.55
    assert m["BLEU-1"] > m["BLEU-2"] > m["BLEU-3"] > m["BLEU-4"]
    assert len(ours[0].per_item["CIDEr-D"]) == N_IMAGES


@needs_data
@needs_java
def test_no_files_in_site_packages(ours):
    scores, seen_dirs, before, after = ours
    assert seen_dirs, "the wrapper should have started Java processes"
    assert not [d for d in seen_dirs if Path(d).resolve().is_relative_to(PKG_DIR.resolve())]
    assert before == after


@needs_data
def test_spice_skipped_with_reason_without_jars(ours, tmp_path, coco, monkeypatch):
    available, _ = cap_mod.spice_status()
    assert ("SPICE" in ours[0].metrics) == available or "failed" in ours[0].skipped.get("spice", "")
    monkeypatch.setattr(cap_mod, "SPICE_DIR", tmp_path)  # no CoreNLP jars here, whatever the machine has
    preds, refs = coco
    scores = score_captions(dict(list(preds.items())[:3]), refs, metrics=("spice", "cider"), work_dir=tmp_path)
    assert "SPICE" not in scores.metrics and "CIDEr-D" in scores.metrics
    reason = scores.skipped["spice"]
    assert ("CoreNLP" in reason and "stanford-corenlp-3.6.0.jar" in reason) or reason == "java not found"
    assert not (PKG_DIR / "spice" / "tmp").exists() and not (PKG_DIR / "spice" / "cache").exists()


def test_spice_status_sees_jars(tmp_path, monkeypatch):
    monkeypatch.setattr(cap_mod, "SPICE_DIR", tmp_path)
    monkeypatch.setattr(cap_mod, "SPICE_JAR", tmp_path / "spice-1.0.jar")
    assert cap_mod.spice_status()[0] is False
    (tmp_path / "lib").mkdir()
    for name in ("spice-1.0.jar", "lib/stanford-corenlp-3.6.0.jar", "lib/stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / name).write_bytes(b"")
    assert cap_mod.spice_status() == (True, "")


def test_spice_command_opens_packages_on_modern_java(monkeypatch, tmp_path):
    assert cap_mod.parse_java_version('openjdk version "1.8.0_312"') == 8
    assert cap_mod.parse_java_version('openjdk version "17.0.9" 2023-10-17') == 17
    assert cap_mod.parse_java_version("no java here") == 0
    monkeypatch.setattr(cap_mod, "java_major_version", lambda java: 17)
    cmd = cap_mod.spice_command("java", tmp_path / "in.json", tmp_path / "out.json", tmp_path / "cache")
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in cmd and "-Xmx4g" in cmd
    assert cmd.index("-jar") > cmd.index("--add-opens=java.base/java.lang=ALL-UNNAMED")
    monkeypatch.setattr(cap_mod, "java_major_version", lambda java: 8)
    assert not [c for c in cap_mod.spice_command("java", tmp_path, tmp_path, tmp_path) if "add-opens" in c]
    with pytest.raises(UserError, match="java_heap"):
        score_captions({"a": "x"}, {"a": ["x"]}, java_heap="lots", use_java=False)


@needs_data
def test_java_free_path_labels_itself_and_stays_close(ours, coco, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java anywhere
    assert find_java() is None
    preds, refs = coco
    scores = score_captions(preds, refs, work_dir=tmp_path)
    assert scores.tokenizer == "python"
    assert scores.skipped == {"meteor": "java not found", "spice": "java not found"}
    assert set(scores.metrics) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"}
    if ours[0].tokenizer == "ptb":
        for name, value in scores.metrics.items():
            assert value == pytest.approx(ours[0].metrics[name], abs=0.01), name
    with pytest.raises(UserError, match="java"):
        score_captions(preds, refs, use_java=True)


@needs_data
@needs_java
def test_python_tokenizer_agrees_with_ptb_on_coco(tmp_path):
    caps = [c for r in json.loads(KARPATHY.read_text()) for c in r["captions"]]
    ptb = ptb_tokenize(caps, tmp_path, find_java())
    py = python_tokenize(caps)
    agree = sum(a == b for a, b in zip(ptb, py)) / len(caps)
    assert agree > 0.999, agree
    assert list(tmp_path.iterdir()) == []  # its temp file is removed


def test_python_tokenizer_rules():
    assert python_tokenize(["A man's dog doesn't run."]) == ["a man 's dog does n't run"]
    assert python_tokenize(['He said "hi", then (left)...']) == ["he said hi then -lrb- left -rrb-"]
    got = python_tokenize(["Two T-shirts cost 3.50 at 10:30 on St. Mark's"])
    assert got == ["two t-shirts cost 3.50 at 10:30 on st. mark 's"]
    assert python_tokenize(["a\nb", ""]) == ["a b", ""]
    assert all(t not in PUNCTUATIONS for t in python_tokenize(["a , b ; c : d ! e ? f -- g"])[0].split())


def test_cider_idf_depends_on_evaluated_set():
    preds = {"a": "a red bus on a street", "b": "a cat on a sofa", "c": "a red car on a street"}
    refs = {"a": ["a red bus drives down a street", "red bus on street"],
            "b": ["a cat sleeping on a sofa", "a cat on the couch"],
            "c": ["a red car parked on the street", "a car on a street"]}
    full = score_captions(preds, refs, metrics=("cider",), use_java=False)
    sub = score_captions({"a": preds["a"], "b": preds["b"]}, refs, metrics=("cider",), use_java=False)
    assert full.per_item["CIDEr-D"]["a"] != pytest.approx(sub.per_item["CIDEr-D"]["a"])
    assert full.metrics["CIDEr-D"] == pytest.approx(sum(full.per_item["CIDEr-D"].values()) / 3)
    as_ints = score_captions({1: preds["a"]}, {1: refs["a"]}, metrics=("bleu",), use_java=False)
    assert list(as_ints.per_item["BLEU-4"]) == ["1"]


def test_bad_inputs_are_user_errors():
    refs = {"a": ["a dog"]}
    with pytest.raises(UserError, match="empty"):
        score_captions({}, refs, use_java=False)
    with pytest.raises(UserError, match="no references"):
        score_captions({"b": "a dog"}, refs, use_java=False)
    with pytest.raises(UserError, match="did you mean 'cider'"):
        score_captions({"a": "a dog"}, refs, metrics=("cidr",), use_java=False)
    with pytest.raises(UserError, match="not a text caption metric"):
        score_captions({"a": "a dog"}, refs, metrics=("clip_s",), use_java=False)
    with pytest.raises(UserError, match="non-empty list"):
        score_captions({"a": "a dog"}, {"a": []}, use_java=False)


def test_registry_names():
    assert METRICS.names() == sorted(["bleu", "meteor", "rouge", "cider", "spice", "clip_s", "refclip_s"])
    assert METRICS.get("cider").outputs == ("CIDEr-D",)
    assert METRICS.get("spice").needs_java


# ------------------------------------------------------------------------- CLIP-S / RefCLIP-S

def test_clip_score_hand_vectors():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    cap = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.8, 0.6]])
    assert clip_score(img, cap).tolist() == pytest.approx([2.5, 0.0, 0.0, 1.5])
    assert clip_score(img, cap, w=1.0).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.6])
    assert clip_score(img * 3, cap * 2).tolist() == pytest.approx([2.5, 0.0, 0.0, 1.5])  # scale-free
    assert with_prompt(["a dog"]) == ["A photo depicts a dog"]


def test_refclip_score_hand_vectors():
    img = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    cap = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    refs = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0]])]
    # item 0: CLIP-S = 2.5*0.6 = 1.5, best ref cos = 0.8 -> 2*1.5*0.8/2.3 ; item 1: both terms 0 -> 0
    got = refclip_score(img, cap, refs)
    assert got.tolist() == pytest.approx([2 * 1.5 * 0.8 / 2.3, 0.0])
    assert not torch.isnan(got).any()
    stacked = torch.stack([refs[0], torch.cat([refs[1], refs[1]])])
    assert refclip_score(img, cap, stacked).tolist() == pytest.approx(got.tolist())
    with pytest.raises(UserError):
        refclip_score(img, cap, refs[:1])
    with pytest.raises(UserError):
        clip_score(img, cap[:1])
    assert math.isclose(float(refclip_score(img[:1], cap[:1], [refs[0][1:]])), 2 * 1.5 * 0.6 / 2.1, rel_tol=1e-6)
