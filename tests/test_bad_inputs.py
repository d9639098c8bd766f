"""The catalogue of bad inputs (docs/bad-inputs.md): each one, hit through the real CLI entry point
(benchmark.cli.main, as the console script runs it), gives exit code 2 and exactly one line
`error: ...` naming the file, field or option and what was expected; never a traceback.

A few kinds are not errors by design and are tested as such at the end: greyscale, palette, alpha,
CMYK and 16-bit images are converted to 8-bit RGB; a feature cache written by another version is
recomputed; METEOR without Java is recorded as skipped (an error only when Java is demanded).
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from benchmark.cli import main
from maccap.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_RN = ROOT / "maccap" / "weights" / "qs-rn.safetensors"
FIRST_IMAGE = "images/clip/qs_clip_000000.png"
ALIGNER = {"n_queries": 2, "n_layers": 1, "n_heads": 2, "ffn_dim": 32, "dropout": 0.0, "mlp_hidden": None,
           "prefix_len": 1}
TINY_TRAIN = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup_iters": 1, "max_captions": 32, "val_images": 0,
              "aligner": ALIGNER}


@pytest.fixture(scope="module")
def world_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from maccap.data import load_split
    from maccap.world import WorldConfig, ensure_world

    out = tmp_path_factory.mktemp("world") / "tiny"
    ensure_world(out, 0, WorldConfig.preset("tiny"), progress=False)
    load_split(out, "clip")  # renders the deferred clip images, which some tests corrupt
    return out


@pytest.fixture
def world(world_master: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny world that a case may damage."""
    return Path(shutil.copytree(world_master, tmp_path / "world"))


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `maccap-bench ARGS` in this process through main(); (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["maccap-bench", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(result: tuple[int, str, str], pattern: str) -> str:
    code, out, err = result
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in out + err, err[-3000:]
    assert code == 2 and len(errors) == 1, (code, out[-1000:], err[-2000:])
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


# ----------------------------------------------------------------------------------------------
# helpers that damage a world copy


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _put_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def _edit_captions(fn: Callable[[list[dict[str, Any]]], Any], replace: bool = False,
                   name: str = "captions_clip.json") -> Callable[[Path], None]:
    """Edit the entries in place with fn, or (replace=True) write what fn returns instead."""
    def edit(w: Path) -> None:
        entries = _json(w / name)
        result = fn(entries)
        _put_json(w / name, result if replace else entries)
    return edit


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size: header and one tiny chunk, no real pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _image(w: Path) -> Path:
    return w / FIRST_IMAGE


def _float_image(w: Path) -> None:
    buf = Path(str(_image(w)) + ".tif")
    Image.fromarray(np.random.rand(64, 64).astype(np.float32)).save(buf, format="TIFF")
    buf.replace(_image(w))


def _clip_train(w: Path, tmp: Path) -> list[str]:
    return ["clip-train", "--world", str(w), "--steps", "1", "--cache-dir", str(tmp / "clip"), "--no-progress"]


# (id, damage(world), expected message): all through `maccap-bench clip-train`, which reads every
# caption file of the world, the corpus and the clip split's images before it trains.
DATA_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("image-missing", lambda w: _image(w).unlink(), r"image not found: .*qs_clip_000000\.png"),
    ("image-zero-size", lambda w: _image(w).write_bytes(b""), r"image .*qs_clip_000000\.png is empty \(0 bytes\)"),
    ("image-not-an-image", lambda w: _image(w).write_bytes(b"this is not a picture " * 20),
     r"qs_clip_000000\.png is not a readable image; expected a PNG or JPEG"),
    ("image-truncated", lambda w: _image(w).write_bytes(_image(w).read_bytes()[:300]),
     r"qs_clip_000000\.png is corrupt or truncated .*expected a complete PNG or JPEG"),
    ("image-huge", lambda w: _image(w).write_bytes(_png_header(9000, 9000)),
     r"qs_clip_000000\.png is 9000x9000, more than 50000000 pixels; resize it first"),
    ("image-bomb", lambda w: _image(w).write_bytes(_png_header(40000, 40000)),
     r"qs_clip_000000\.png is too large \(decompression bomb guard\)"),
    ("image-float-pixels", _float_image, r"floating-point pixels \(mode F\)"),
    ("captions-malformed-json", lambda w: (w / "captions_clip.json").write_text('[{"image_name": ', encoding="utf-8"),
     r"caption file .*captions_clip\.json is malformed JSON: .* at line 1 column"),
    ("captions-truncated", lambda w: (w / "captions_clip.json").write_bytes((w / "captions_clip.json").read_bytes()[:999]),
     r"captions_clip\.json is malformed JSON"),
    ("captions-zero-size", lambda w: (w / "captions_val.json").write_bytes(b""),
     r"caption file .*captions_val\.json is empty; expected JSON"),
    ("captions-not-utf8", lambda w: (w / "captions_test.json").write_bytes(b"\xff\xfe" + (w / "captions_test.json").read_bytes()),
     r"captions_test\.json is not UTF-8 \(byte 0\)"),
    ("captions-wrong-shape", _edit_captions(lambda e: {"images": e}, replace=True),
     r"captions_clip\.json: expected a JSON list of image entries, got dict"),
    ("captions-entry-not-object", _edit_captions(lambda e: [1] + e, replace=True),
     r"captions_clip\.json entry 0: expected an object, got int"),
    ("captions-field-missing", _edit_captions(lambda e: e[3].pop("captions")),
     r"entry 3: field 'captions' must be a non-empty list of strings"),
    ("caption-empty", _edit_captions(lambda e: e[0]["captions"].__setitem__(1, "   ")),
     r"entry 0: captions\[1\] is empty"),
    ("caption-too-long", _edit_captions(lambda e: e[0]["captions"].__setitem__(0, "a red circle " * 60)),
     r"entry 0: captions\[0\] has 780 characters, more than 500"),
    ("caption-not-a-string", _edit_captions(lambda e: e[2]["captions"].__setitem__(0, 7)),
     r"entry 2: captions\[0\] is int, expected a string"),
    ("image-id-not-integer", _edit_captions(lambda e: e[1].__setitem__("image_id", "one")),
     r"entry 1: field 'image_id' must be an integer"),
    ("duplicate-image-id", _edit_captions(lambda e: e[5].__setitem__("image_id", e[4]["image_id"])),
     r"entry 5: image_id \d+ appears twice"),
    ("duplicate-image", _edit_captions(lambda e: e[5].__setitem__("image_name", e[4]["image_name"])),
     r"entry 5: image 'clip/qs_clip_000004\.png' appears twice"),
    ("corpus-item-not-a-string", lambda w: _put_json(w / "corpus_train.json", ["a red circle", 3]),
     r"training corpus .*corpus_train\.json item 1: expected a string, got int"),
    ("corpus-empty", lambda w: _put_json(w / "corpus_train.json", []),
     r"training corpus .*corpus_train\.json is an empty list"),
]


@pytest.mark.parametrize("kind,damage,pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data(kind: str, damage: Callable[[Path], None], pattern: str, world: Path, tmp_path: Path) -> None:
    damage(world)
    assert_one_line_error(run_cli(*_clip_train(world, tmp_path)), pattern)


# ----------------------------------------------------------------------------------------------
# names, options, suites


def _suite_yaml(tmp: Path, **changes: Any) -> Path:
    """A small valid suite with the dummy task, with `changes` applied to the top level."""
    d: dict[str, Any] = {"name": "bad", "version": 1, "dataset": {"name": "coco", "data_dir": str(tmp)},
                         "backbones": ["qs-rn"], "seeds": [0], "eval_seeds": [10],
                         "tasks": [{"task": "dummy", "params": {"n_items": 1, "image": False}}]}
    d.update(changes)
    p = tmp / "bad.yaml"
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    return p


def _cfg(tmp: Path, params: dict[str, Any]) -> str:
    p = tmp / "cfg.yaml"
    p.write_text(yaml.safe_dump(params), encoding="utf-8")
    return str(p)


def _tiny_params(**over: Any) -> dict[str, Any]:
    return {"lm": "tiny-gpt2", "train": dict(TINY_TRAIN), "max_images": 2, "metrics": ["bleu"], **over}


def _state_with(change: Callable[[dict[str, torch.Tensor]], None], path: Path) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(str(SHIPPED_RN))
    change(state)
    save_file(state, str(path))
    return path


def _pickled_object(path: Path) -> Path:
    import argparse

    torch.save({"model": argparse.Namespace(evil=True)}, path)
    return path


def _gap(w: Path, tmp: Path, backbone: str) -> list[str]:
    return ["gap", "--backbone", backbone, "--dataset", str(w), "--work-dir", str(tmp / "w"),
            "--results-dir", str(tmp / "r"), "--no-figures", "--no-progress"]


def _eval(w: Path, tmp: Path, *more: str) -> list[str]:
    return ["eval", "--dataset", str(w), "--work-dir", str(tmp / "w"), "--results", str(tmp / "r"), "--no-progress",
            *more]


def _train(w: Path, tmp: Path, *more: str) -> list[str]:
    return ["train", "--dataset", str(w), "--work-dir", str(tmp / "w"), "--no-progress", *more]


def _run(tmp: Path, suite: Path, *more: str) -> list[str]:
    # one process: the faults these tests plant (monkeypatches) live in this process only
    return ["run", str(suite), "--results-dir", str(tmp / "results"), "--reports-dir", str(tmp / "reports"),
            "--work-dir", str(tmp / "work"), "--no-progress", "--jobs", "1", *more]


# (id, args(world, tmp), expected message)
OPTION_CASES: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    ("unknown-backbone", lambda w, t: ["clip-train", "--backbone", "qs-rnn", "--world", str(w)],
     r"unknown backbone 'qs-rnn'; did you mean 'qs-rn'"),
    ("unknown-open-clip-architecture", lambda w, t: _gap(w, t, "ViT-Q-99/openai"),
     r"unknown open_clip architecture 'ViT-Q-99'"),
    ("unknown-method", lambda w, t: _eval(w, t, "--method", "macap"), r"unknown method 'macap'; did you mean 'maccap'"),
    ("unknown-metric", lambda w, t: _eval(w, t, "--config", _cfg(t, _tiny_params(metrics=["bleu", "cidr"]))),
     r"unknown metric 'cidr'; did you mean 'cider'"),
    ("unknown-task", lambda w, t: ["validate", "--suite", str(_suite_yaml(t, tasks=[{"task": "captoin"}]))],
     r"bad\.yaml: tasks\[0\]\.task: unknown task 'captoin'; did you mean 'caption'"),
    ("unknown-suite", lambda w, t: ["run", "quickstrat"], r"unknown suite 'quickstrat'; did you mean 'quickstart'"),
    ("suite-file-missing", lambda w, t: ["run", str(t / "nope.yaml")], r"suite file not found: .*nope\.yaml"),
    ("suite-malformed-yaml", lambda w, t: ["validate", "--suite", str(_write(t / "m.yaml", "name: [unclosed\n"))],
     r"suite file .*m\.yaml is malformed YAML at line \d+ column \d+"),
    ("suite-wrong-type", lambda w, t: ["validate", "--suite", str(_suite_yaml(t, seeds="0"))],
     r"bad\.yaml: seeds: expected a list, got str '0'"),
    ("suite-unknown-key", lambda w, t: ["validate", "--suite", str(_suite_yaml(t, sedes=[0]))],
     r"bad\.yaml: sedes: unknown key; did you mean 'seeds'\?"),
    ("suite-seed-out-of-range", lambda w, t: ["validate", "--suite", str(_suite_yaml(t, seeds=[-1]))],
     r"bad\.yaml: seeds\[0\]: seed -1 out of range; expected 0 <= seed < 2\*\*32"),
    ("world-seed-out-of-range", lambda w, t: ["world", "--out", str(t / "new"), "--seed", "-1", "--preset", "tiny"],
     r"world seed -1 is out of range; expected an integer in \[0, 2\*\*32\)"),
    ("cli-seed-out-of-range", lambda w, t: _eval(w, t, "--train-seed", str(2**32)),
     r"training seed 4294967296 is out of range"),
    ("shard-out-of-range", lambda w, t: _run(t, _suite_yaml(t), "--shard", "3/2"), r"--shard '3/2': expected 0 <= i < n"),
    ("checkpoint-of-another-backbone", lambda w, t: _gap(w, t, f"qs-vit@{SHIPPED_RN}"),
     r"weights .*qs-rn\.safetensors do not match the architecture 'qs-vit': \d+ key\(s\) missing .*another backbone\?"),
    ("checkpoint-wrong-dimensions",
     lambda w, t: _gap(w, t, "qs-rn@" + str(_state_with(lambda s: s.__setitem__("text_projection", s["text_projection"][:, :64].contiguous()),
                                                         t / "narrow.safetensors"))),
     r"do not match the architecture 'qs-rn': 1 key\(s\) with another shape \(e\.g\. text_projection is \[128, 64\] in the "
     r"file, \[128, 128\] in the model\)"),
    ("checkpoint-not-weights", lambda w, t: _gap(w, t, "qs-rn@" + str(_write(t / "junk.pt", "not a checkpoint"))),
     r"cannot read weights file .*junk\.pt: .*expected a safetensors file or a torch state dict"),
    ("checkpoint-with-pickled-code", lambda w, t: _gap(w, t, "qs-rn@" + str(_pickled_object(t / "evil.pt"))),
     r"cannot read weights file .*evil\.pt: UnpicklingError"),
    ("train-config-wrong-type", lambda w, t: _train(w, t, "--config", _cfg(t, _tiny_params(train={"lr": "fast"}))),
     r"training config: lr: expected a number, got str 'fast'"),
    ("train-config-unknown-option", lambda w, t: _train(w, t, "--config", _cfg(t, _tiny_params(train={"epochz": 2}))),
     r"training config: unknown option\(s\) epochz"),
    ("nan-loss", lambda w, t: _train(w, t, "--config", _cfg(t, _tiny_params(train={**TINY_TRAIN, "lr": 1e30}))),
     r"training maccap: loss is (nan|inf) at step \d+ \(epoch 1, batch \d+\); lower the learning rate"),
    ("lm-directory-without-checkpoint", lambda w, t: _train(w, t, "--lm", str(_mkdir(t / "my-lm"))),
     r"LM directory .*my-lm has no config\.json; expected a transformers checkpoint"),
    ("data-dir-not-a-directory", lambda w, t: ["validate", "--data", str(_write(t / "file", "x"))],
     r"--data .*file: not a directory"),
    ("results-dir-is-a-file", lambda w, t: _run(t, _suite_yaml(t), "--results-dir", str(_write(t / "f", "")) + "/r"),
     r"cannot create results directory .*/f/r/bad"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("kind,args,pattern", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_names_options_suites_and_checkpoints(kind: str, args: Callable[[Path, Path], list[str]], pattern: str,
                                                  world: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    assert_one_line_error(run_cli(*args(world, tmp_path)), pattern)


def test_edited_image_fails_the_manifest_check(world: Path) -> None:
    """An image changed after the manifest was written: `validate` lists it and exits 2."""
    Image.new("RGB", (64, 64), (1, 2, 3)).save(_image(world))
    code, out, err = run_cli("validate", "--data", str(world))
    assert_one_line_error((code, out, err), r"1 problem\(s\) found \(listed above\)")
    assert re.search(r"\[problem\] .*qs_clip_000000\.png: checksum mismatch", out)


def test_bad_vqa_file(world: Path, tmp_path: Path) -> None:
    qs = _json(world / "vqa" / "questions_test.json")
    qs["questions"][1]["question_id"] = qs["questions"][0]["question_id"]
    _put_json(world / "vqa" / "questions_test.json", qs)
    args = ["vqa", "--dataset", str(world), "--work-dir", str(tmp_path / "w"), "--results", str(tmp_path / "r"),
            "--lm", "tiny-gpt2", "--no-progress"]
    assert_one_line_error(run_cli(*args), r"VQA questions file .*questions_test\.json: duplicate question_id \d+")


def test_results_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing result files: one line naming the file, nothing half-written left."""
    import pathlib

    real = pathlib.Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if ".result.json." in self.name or ".items.jsonl." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    result = run_cli(*_run(tmp_path, _suite_yaml(tmp_path)))
    assert_one_line_error(result, r"cannot write .*result\.json: No space left on device")
    assert not list((tmp_path / "results").rglob("result.json"))
    assert not [p for p in (tmp_path / "results").rglob("*.tmp")]


def test_two_runners_on_one_results_dir(tmp_path: Path) -> None:
    from filelock import FileLock

    suite = _suite_yaml(tmp_path)
    (tmp_path / "results" / "bad").mkdir(parents=True)
    with FileLock(str(tmp_path / "results" / "bad" / ".runner.lock")):
        result = run_cli(*_run(tmp_path, suite))
    assert_one_line_error(result, r"another runner is writing .*results/bad \(lock .*\.runner\.lock is held\); wait for "
                                  r"it to finish or use a different --results-dir")
    assert run_cli(*_run(tmp_path, suite))[0] == 0  # released: the same command now works


def test_captioner_checkpoint_for_another_lm_width(world: Path, tmp_path: Path) -> None:
    """Trained bridge weights whose output width does not fit the LM's embeddings (a file swapped in by
    hand: the cache key keeps different LMs apart): one line naming the file and how to recover."""
    from safetensors.torch import load_file, save_file

    from maccap.io import sha256_file

    torch.set_num_threads(1)
    args = _train(world, tmp_path, "--config", _cfg(tmp_path, _tiny_params()))
    assert run_cli(*args)[0] == 0
    (cap_dir,) = list((tmp_path / "w" / "captioners").iterdir())
    weights = cap_dir / "bridge.safetensors"
    state = load_file(str(weights))
    last = sorted(k for k in state if k.endswith("weight") and state[k].dim() == 2)[-1]
    state[last] = torch.zeros(state[last].shape[0] * 2, state[last].shape[1])
    save_file(state, str(weights))
    meta = _json(cap_dir / "meta.json")
    meta["bridge_sha256"] = sha256_file(weights)
    _put_json(cap_dir / "meta.json", meta)
    assert_one_line_error(run_cli(*args), r"captioner weights .*bridge\.safetensors do not fit this method/LM/aligner "
                                          r"\(RuntimeError: .*size mismatch.*\); delete .* to retrain")


# ----------------------------------------------------------------------------------------------
# inputs that are accepted on purpose


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_other_image_modes_become_rgb(mode: str, tmp_path: Path) -> None:
    """Greyscale, alpha, palette, CMYK (JPEG), 16-bit and 1-bit images are read as 8-bit RGB of the same
    size; a 16-bit greyscale gradient keeps its range (PIL's own convert would clip it to white)."""
    from maccap.data import load_image

    rng = np.random.default_rng(0)
    if mode == "I;16":
        im = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (64, 48)
    arr = np.asarray(out)
    if mode == "I;16":
        assert arr.min() == 0 and 120 < arr.mean() < 136 and arr.max() >= 250
    else:
        assert arr.std() > 10  # not a blank image


def test_feature_cache_of_another_version_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from maccap import features
    from maccap.backbones import load_backbone

    bb = load_backbone("qs-rn")
    texts = ["a red circle", "two blue squares"]
    first = features.text_features(bb, texts, tmp_path, progress=False)
    (meta_path,) = list(tmp_path.rglob("meta.json"))
    meta = _json(meta_path)
    meta["version"] = features.CACHE_VERSION + 41
    _put_json(meta_path, meta)
    with caplog.at_level(logging.WARNING):
        again = features.text_features(bb, texts, tmp_path, progress=False)
    assert "belongs to another version/backbone/data; recomputing" in caplog.text
    assert torch.equal(first, again) and _json(meta_path)["version"] == features.CACHE_VERSION


def test_meteor_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Java: METEOR (and SPICE) are recorded as skipped with the reason; demanding Java is an error."""
    import maccap.metrics.captions as C

    monkeypatch.setattr(C, "find_java", lambda: None)
    preds, refs = {"1": "a red circle"}, {"1": ["a red circle", "a circle"]}
    scores = C.score_captions(preds, refs, metrics=["bleu", "meteor"])
    assert scores.skipped == {"meteor": "java not found"} and "BLEU-4" in scores.metrics
    with pytest.raises(UserError, match=r"use_java=True but no `java` executable is on PATH"):
        C.score_captions(preds, refs, metrics=["meteor"], use_java=True)


def test_catalogue_has_at_least_25_kinds_and_is_documented() -> None:
    kinds = [c[0] for c in DATA_CASES] + [c[0] for c in OPTION_CASES] + [
        "manifest-checksum-mismatch", "vqa-duplicate-question-id", "results-disk-full", "results-dir-locked",
        "captioner-checkpoint-for-another-lm"]
    assert len(kinds) == len(set(kinds)) >= 25
    doc = (ROOT / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    missing = [k for k in kinds if f"`{k}`" not in doc]
    assert not missing, missing
