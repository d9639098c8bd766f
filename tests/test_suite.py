"""Suite YAML validation: every mistake names the file and key; shipped suites all load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.suite import SeedPair, list_suites, load_suite, suites_registry
from maccap.errors import UserError


def _base() -> dict:
    return {
        "name": "s", "version": 1,
        "dataset": {"name": "quickstart", "world": {"seed": 0, "preset": "tiny"}},
        "backbones": ["qs-rn"], "seeds": [0, 1], "eval_seeds": [10, 11],
        "tasks": [{"task": "caption", "methods": ["maccap", "capdec"], "params": {"lm": "tiny-gpt2", "train": {"epochs": 1}},
                   "method_params": {"capdec": {"train": {"lr": 0.5}}}}],
    }


def _write(tmp_path: Path, obj: dict | str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj), encoding="utf-8")
    return p


def _err(tmp_path: Path, obj: dict | str) -> str:
    with pytest.raises(UserError) as ei:
        load_suite(_write(tmp_path, obj))
    return str(ei.value)


def test_valid_suite_parses_with_pairs_and_merged_params(tmp_path: Path) -> None:
    s = load_suite(_write(tmp_path, _base()))
    assert s.seeds == (SeedPair(0, 10), SeedPair(1, 11))
    entry = s.tasks[0]
    assert entry.params_for("capdec") == {"lm": "tiny-gpt2", "train": {"epochs": 1, "lr": 0.5}}
    assert entry.params_for("maccap") == {"lm": "tiny-gpt2", "train": {"epochs": 1}}
    c1 = s.config_hash(entry, "maccap", "qs-rn", s.seeds[0])
    assert c1 == s.config_hash(entry, "maccap", "qs-rn", s.seeds[0])
    assert c1 != s.config_hash(entry, "maccap", "qs-rn", s.seeds[1])
    assert c1 != s.config_hash(entry, "capdec", "qs-rn", s.seeds[0])


def test_a_changed_method_definition_changes_the_run_hash(tmp_path: Path, monkeypatch) -> None:
    """A result of CapDec as it was defined before is not reused for CapDec as it is now."""
    import dataclasses

    from maccap.methods import METHODS

    s = load_suite(_write(tmp_path, _base()))
    entry = s.tasks[0]
    before = s.config_hash(entry, "capdec", "qs-rn", s.seeds[0])
    old = METHODS.get("capdec")
    monkeypatch.setitem(METHODS._items, "capdec", dataclasses.replace(old, finetune_lm=not old.finetune_lm))
    assert s.config_hash(entry, "capdec", "qs-rn", s.seeds[0]) != before


def test_entry_seeds_select_a_subset_of_the_seed_pairs(tmp_path: Path) -> None:
    d = _base()
    d["tasks"].append({"task": "gap", "seeds": [1]})
    s = load_suite(_write(tmp_path, d))
    assert s.tasks[0].seed_pairs(s.seeds) == s.seeds
    assert s.tasks[1].seed_pairs(s.seeds) == (SeedPair(1, 11),)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(backbone=["qs-rn"]), "backbone: unknown key; did you mean 'backbones'?"),
    (lambda d: d.pop("eval_seeds"), "eval_seeds: missing required key"),
    (lambda d: d.update(seeds="0,1"), "seeds: expected a list"),
    (lambda d: d.update(seeds=[0, 2**32]), "seeds[1]: seed 4294967296 out of range"),
    (lambda d: d.update(seeds=[-1, 1]), "seeds[0]: seed -1 out of range"),
    (lambda d: d.update(seeds=[3, 3]), "seeds[1]: duplicate seed 3"),
    (lambda d: d.update(seeds=[True, 1]), "seeds[0]: expected an integer seed"),
    (lambda d: d.update(eval_seeds=[10]), "eval_seeds: has 1 seeds but `seeds` has 2"),
    (lambda d: d.update(backbones=["qs-rnn"]), "backbones[0]: unknown backbone 'qs-rnn'; did you mean 'qs-rn'"),
    (lambda d: d.update(backbones=["qs-rn", "qs-rn"]), "backbones[1]: duplicate 'qs-rn'"),
    (lambda d: d["tasks"][0].update(task="captoin"), "tasks[0].task: unknown task 'captoin'; did you mean 'caption'"),
    (lambda d: d["tasks"][0].update(methods=["maccap", "capdek"]), "tasks[0].methods[1]: unknown method 'capdek' for task 'caption'; did you mean 'capdec'"),
    (lambda d: d["tasks"][0].update(params=[1]), "tasks[0].params: expected a mapping"),
    (lambda d: d["tasks"][0].update(parms={}), "tasks[0].parms: unknown key; did you mean 'params'?"),
    (lambda d: d["tasks"][0].update(method_params={"decap": {}}), "tasks[0].method_params.decap: not one of this entry's methods"),
    (lambda d: d["tasks"].append(dict(d["tasks"][0])), "tasks[1].name: duplicate task entry name 'caption'"),
    (lambda d: d.update(dataset={"name": "quickstart", "world": {"seed": 0, "preset": "huge"}}), "dataset.world.preset: unknown world preset 'huge'"),
    (lambda d: d.update(dataset={"name": "quickstart"}), "dataset.world: missing required key"),
    (lambda d: d.update(dataset={"name": "coco", "world": {"seed": 0, "preset": "tiny"}}), "dataset.world: only the quickstart dataset"),
    (lambda d: d.update(device="gpu"), "device: 'gpu': expected cpu, auto"),
    (lambda d: d.update(name="a b"), "name: 'a b'"),
    (lambda d: d.update(tasks=[]), "tasks: expected a non-empty list"),
    (lambda d: d.update(version=[1]), "version: expected an integer or a string"),
    (lambda d: d["tasks"][0].update(seeds=[5]), "tasks[0].seeds[0]: seed 5 is not one of the suite's seeds"),
    (lambda d: d["tasks"][0].update(seeds=[]), "tasks[0].seeds: expected a non-empty list"),
])
def test_validation_errors_name_file_and_key(tmp_path: Path, mutate, expected: str) -> None:
    d = _base()
    mutate(d)
    msg = _err(tmp_path, d)
    assert str(tmp_path / "s.yaml") in msg
    assert expected in msg


def test_malformed_yaml_and_non_mapping(tmp_path: Path) -> None:
    assert "malformed YAML at line 2" in _err(tmp_path, "name: s\n  bad: [\n")
    assert "expected a mapping at the top level" in _err(tmp_path, "- 1\n- 2\n")


def test_unknown_suite_name_suggests() -> None:
    with pytest.raises(UserError, match="did you mean 'quickstart'"):
        load_suite("quickstrat")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    text = yaml.safe_dump(_base()) + "extra: !!python/object/apply:os.system ['true']\n"
    assert "malformed YAML" in _err(tmp_path, text) or "could not determine a constructor" in _err(tmp_path, text)


def test_shipped_suites_load_and_are_listed() -> None:
    names = list_suites()
    for required in ("quickstart", "tiny", "gap", "ablations", "coco", "flickr30k", "cross-domain", "vqav2"):
        assert required in names
        assert required in suites_registry()
    for name in names:
        s = load_suite(name)
        assert s.name == name
        assert len(s.seeds) >= 1 and all(t.params for t in s.tasks)


def test_quickstart_and_paper_suites_content() -> None:
    q = load_suite("quickstart")
    assert [t.task for t in q.tasks] == ["clip", "gap", "subregion", "caption", "vqa", "vqa", "vqa"]
    assert q.backbones == ("qs-rn", "qs-vit") and len(q.seeds) == 3
    assert q.entry("caption").methods == ("maccap", "capdec", "decap", "no-image")
    coco = load_suite("coco")
    cap = coco.entry("caption")
    assert coco.backbones == ("ViT-B-32/openai",)
    assert cap.params["lm"] == "facebook/opt-1.3b"
    assert cap.params["train"]["epochs"] == 8 and cap.params["train"]["batch_size"] == 32
    assert cap.params["train"]["lr"] == pytest.approx(1e-4)
    cd = load_suite("cross-domain")
    assert {t.dataset.display for t in cd.tasks} == {"coco->flickr30k", "flickr30k->coco"}
    assert coco.entry("caption").dataset.data_dir == "data/coco"
    vqa = load_suite("vqav2")
    assert {t.params["mode"] for t in vqa.tasks} == {"prefix", "caption"}
    assert vqa.entry("vqa-prefix").params["train"] == cap.params["train"]  # the COCO captioner is reused


def test_dummy_task_accepts_any_backbone(tmp_path: Path) -> None:
    d = _base()
    d["backbones"] = ["anything-goes"]
    d["tasks"] = [{"task": "dummy", "methods": ["m1"], "params": {}}]
    s = load_suite(_write(tmp_path, d))
    assert s.tasks[0].backbones == ("anything-goes",)
