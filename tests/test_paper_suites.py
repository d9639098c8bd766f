"""The paper-setting suites (coco, flickr30k, cross-domain, vqav2) on small real-format data.

Raw files in the layouts users have (Karpathy dataset_*.json built from real reference captions, tiny
PIL images, VQAv2 val2014 files in the official layout) go through `maccap-bench data prepare`; then
`validate` must name exactly what the real run still lacks, and each suite, shrunk with --set
(quickstart backbone, tiny LM, 1 epoch, 1 seed), runs end to end up to its report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmark.cli import cli
from benchmark.runner import plan_suite
from benchmark.store import read_result
from benchmark.suite import load_suite
from maccap.errors import UserError
from realdata import SHARED, build_raw, needs_shared, tiny_overrides

pytestmark = needs_shared
PAPER_SUITES = ("coco", "flickr30k", "cross-domain", "vqav2")


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    if isinstance(r.exception, UserError):
        return 2, r.output + f"error: {r.exception}"
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output + repr(r.exception)
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tmp/data/{coco,flickr30k} prepared from raw files, where the suites' `data_dir`s point (relative)."""
    root = tmp_path_factory.mktemp("paper")
    build_raw(root / "raw")
    for args in (["coco", "--root", "raw", "--out", "data/coco"],
                 ["flickr30k", "--root", "raw", "--out", "data/flickr30k"],
                 ["vqav2", "--root", "raw", "--out", "data/coco", "--split", "val"]):
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            r = CliRunner().invoke(cli, ["data", "prepare", *args, "--no-progress"])
        assert r.exit_code == 0, r.output + repr(r.exception)
    return root


def test_prepared_layout_from_karpathy_and_vqav2_files(prepared: Path) -> None:
    coco = prepared / "data" / "coco"
    test = json.loads((coco / "captions_test.json").read_text())
    ref = json.loads((SHARED / "mscoco_test.json").read_text())[: len(test)]
    assert [e["captions"] for e in test] == [e["captions"] for e in ref]  # real references, unchanged
    assert test[0]["image_id"] == 391895 and (coco / "images" / "val2014" / test[0]["image_name"]).is_file()
    assert len(json.loads((coco / "corpus_train.json").read_text())) == 24 * 5  # train + restval captions
    qs = json.loads((coco / "vqa" / "questions_val.json").read_text())["questions"]
    val_ids = {e["image_id"] for e in json.loads((coco / "captions_val.json").read_text())}
    assert qs and {q["image_id"] for q in qs} == val_ids  # the question about a non-Karpathy-val image is dropped
    manifest = json.loads((coco / "manifest.json").read_text())
    assert manifest["name"] == "coco+vqav2"
    flickr = json.loads((prepared / "data" / "flickr30k" / "captions_test.json").read_text())
    assert flickr[0]["image_id"] == 1007129816


def test_validate_lists_exactly_what_the_real_runs_lack(prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(prepared)
    java = shutil.which("java") is not None
    for suite in PAPER_SUITES:
        code, out = _cli("validate", "--suite", suite)
        missing = {line.split(":")[0] for line in out.splitlines() if line.startswith("[MISSING]")}
        want = {"[MISSING] backbone ViT-B-32/openai", "[MISSING] lm facebook/opt-1.3b"}
        if suite != "vqav2":  # captioning metrics: SPICE needs CoreNLP jars (and Java)
            want.add("[MISSING] tool SPICE jars")
            if not java:
                want |= {"[MISSING] tool java (METEOR)", "[MISSING] tool java (SPICE)"}
        assert missing == want, (suite, out)
        assert code == 2 and f"{len(want)} problem(s) found" in out
    # shrunk with --set, coco lacks only SPICE's jars (SPICE is then recorded as skipped)
    sets = sum((["--set", s] for s in tiny_overrides("coco")), [])
    code, out = _cli("validate", "--suite", "coco", *sets)
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("[MISSING]")] == \
        (["[MISSING] tool SPICE jars"] if java else ["[MISSING] tool java (METEOR)", "[MISSING] tool java (SPICE)",
                                                     "[MISSING] tool SPICE jars"])
    monkeypatch.chdir(prepared / "raw")  # from elsewhere, the data directories are what is missing
    code, out = _cli("validate", "--suite", "cross-domain")
    assert "[MISSING] data coco->flickr30k: data/flickr30k does not exist" in out
    assert "[MISSING] data coco (training corpus): data/coco does not exist" in out


def test_overrides_shrink_a_suite_and_are_checked() -> None:
    for suite in PAPER_SUITES:
        full, tiny = load_suite(suite), load_suite(suite, overrides=tiny_overrides(suite))
        assert [e.name for e in tiny.tasks] == [e.name for e in full.tasks]  # the same structure, smaller
        assert tiny.backbones == ("qs-rn",) and len(tiny.seeds) == 1 and tiny.overrides == tuple(tiny_overrides(suite))
        for e in tiny.tasks:
            if e.task in ("caption", "vqa"):
                assert e.params["lm"] == "tiny-gpt2" and e.params["train"]["epochs"] == 1
                assert e.params["train"]["aligner"]["n_queries"] == 4 and e.params["train"]["weight_decay"] == 0.01
        assert len(plan_suite(tiny, "/nonexistent")) == sum(len(e.methods) for e in full.tasks)
    s = load_suite("coco", overrides=["tasks.*.params.batch_size=8", "tasks.0.params.figures=false"])
    assert [e.params["batch_size"] for e in s.tasks] == [8, 8, 8] and s.tasks[0].params["figures"] is False
    for bad, msg in (("seeds", "expected KEY=VALUE"), ("tasks.capton.params.lm=x", "no list entry named 'capton'"),
                     ("tasks.9.params.lm=x", "index 9 out of range"), ("seeds=[0", "not valid YAML"),
                     ("backbone=[qs-rn]", "backbone: unknown key; did you mean 'backbones'?"),
                     ("name.x=1", "cannot go into 'x'")):
        with pytest.raises(UserError, match=msg.replace("[", r"\[").replace("?", r"\?")):
            load_suite("coco", overrides=[bad])


@pytest.mark.slow
@pytest.mark.parametrize("suite", PAPER_SUITES)
def test_paper_suite_runs_end_to_end_when_shrunk(suite: str, prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(prepared)
    sets = tiny_overrides(suite)
    if suite == "coco":  # the full metric list once (METEOR with Java, SPICE skipped); fewer methods for time
        sets += ["tasks.caption.methods=[maccap,decap]"]
    else:
        sets += [f"tasks.{e.name}.params.metrics=[bleu,rouge,cider,clip_s]"
                 for e in load_suite(suite).tasks if e.task == "caption"]
    if suite == "flickr30k":
        sets += ["tasks.caption.methods=[maccap,capdec]", "tasks.gap.params.figures=false",
                 "tasks.subregion.params.figures=false"]
    args = ["run", suite, "--results-dir", f"results-{suite}", "--reports-dir", f"reports-{suite}", "--no-progress",
            "--jobs", "1"]
    code, out = _cli(*args, *sum((["--set", s] for s in sets), []))
    assert code == 0 and "0 failed" in out, out
    assert (prepared / f"reports-{suite}" / suite / "index.html").is_file()
    results = sorted((prepared / f"results-{suite}" / suite).rglob("result.json"))
    plan = plan_suite(load_suite(suite, overrides=sets), prepared / f"results-{suite}")
    assert len(results) == len(plan) and all(r.done for r in plan)
    for path in results:
        res = read_result(path)
        assert res["status"] == "ok" and res["provenance"]["runner"]["suite_overrides"] == sets
        bb = res["provenance"]["weights"].get("backbone")
        if bb:  # the exact CLIP weights: the shipped file's hash
            assert bb["name"] == "qs-rn" and len(bb["weights_sha256"]) == 64
        if res["task"].startswith(("caption", "vqa")):
            assert res["provenance"]["weights"]["lm"]["spec"] == "tiny-gpt2"
            assert len(res["provenance"]["weights"]["captioner_sha256"]) == 64
    if suite == "coco":
        cap = read_result(prepared / "results-coco/coco/caption/maccap/qs-rn/seed0/result.json")
        assert "SPICE" not in cap["metrics"] and "spice" in cap["skipped_metrics"]
        assert ("METEOR" in cap["metrics"]) == (shutil.which("java") is not None)
    if suite == "cross-domain":
        cap = read_result(prepared / "results-cross-domain/cross-domain/caption-coco2flickr/maccap/qs-rn/seed0/result.json")
        assert cap["dataset"] == "coco->flickr30k" and cap["counts"]["train_captions"] == 64
    if suite == "vqav2":
        vqa = read_result(prepared / "results-vqav2/vqav2/vqa-prefix/maccap/qs-rn/seed0/result.json")
        assert vqa["counts"]["questions"] == 9
