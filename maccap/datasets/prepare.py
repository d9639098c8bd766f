"""Build the suite's data directory (docs/architecture.md, "Data directory layout") from real data.

`prepare_coco` / `prepare_flickr30k` turn Karpathy caption files plus an image folder into
captions_{val,test}.json, corpus_train.json (train + restval captions, optionally CC3M captions) and
images/; `prepare_vqav2` adds vqa/questions_{split}.json and vqa/annotations_{split}.json. Several
preparations may share one directory (COCO captions and VQAv2 both use COCO val2014 images).

Guarantees: every image an evaluation entry names exists (or is dropped, counted, with
`allow_missing`); no evaluation caption appears in the training corpus (found leaks are dropped by
default and recorded); no image id sits in two splits; manifest.json, holding the SHA-256 of every
file the directory contains, is written last, so a directory without it is unfinished.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from tqdm.auto import tqdm

from maccap.datasets.karpathy import (EVAL_SPLITS, TRAIN_SPLITS, CaptionItem, merge_sources, normalise_caption,
                                      read_caption_source, read_text_corpus)
from maccap.data import MAX_CAPTION_CHARS
from maccap.errors import UserError
from maccap.io import atomic_path, atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

LinkMode = Literal["symlink", "copy", "none"]
LINK_MODES = ("symlink", "copy", "none")
MANIFEST_VERSION = 1
_LEAK_EXAMPLES = 5
_MISSING_SHOWN = 5


@dataclass
class LeakReport:
    """Evaluation captions found in the training corpus (after `normalise_caption`)."""

    found: int = 0  # corpus captions equal to some val/test caption
    dropped: int = 0
    distinct: int = 0  # distinct leaked caption texts
    examples: list[str] = field(default_factory=list)


@dataclass
class PrepareReport:
    """What a preparation wrote and found; also stored in the manifest under "prepare"."""

    dataset: str
    out_dir: str
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> {images, captions}
    corpus_size: int = 0
    corpus_sources: dict[str, int] = field(default_factory=dict)
    leaks: LeakReport = field(default_factory=LeakReport)
    missing_images: list[str] = field(default_factory=list)
    link: str = "symlink"
    images_root: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # input file -> sha256
    files_written: int = 0
    corpus_too_long_dropped: int = 0  # corpus captions over maccap.data.MAX_CAPTION_CHARS
    questions_outside_captions: int = 0  # VQA: questions dropped because their image is not in captions_{split}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- images

def _find_image(images_root: Path, file_path: str | None, image_name: str) -> Path | None:
    """The image under images_root/file_path/name, or directly under images_root."""
    candidates = [images_root / file_path / image_name] if file_path else []
    candidates.append(images_root / image_name)
    for c in candidates:
        if c.is_file():
            return c
    return None


def _locate_images(items: list[tuple[str, str | None, str]], images_root: Path | None, allow_missing: int,
                   what: str) -> tuple[dict[str, Path], list[str]]:
    """Map relpath -> source file for (relpath, file_path, name); raise if more than allow_missing are absent."""
    if images_root is None:
        return {}, []
    if not images_root.is_dir():
        raise UserError(f"--images {images_root} is not a directory; expected the folder holding the {what} images")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for rel, file_path, name in items:
        src = _find_image(images_root, file_path, name)
        if src is None:
            missing.append(rel)
        else:
            found[rel] = src
    if len(missing) > allow_missing:
        shown = ", ".join(missing[:_MISSING_SHOWN]) + (" ..." if len(missing) > _MISSING_SHOWN else "")
        raise UserError(
            f"{len(missing)} of {len(items)} {what} images are missing under {images_root} (looked for "
            f"IMAGES/file_path/image_name and IMAGES/image_name): {shown}. Point --images at the right folder, "
            f"or pass --allow-missing {len(missing)} to drop those images from the evaluation files")
    if missing:
        log.warning("%d %s images are missing; their entries are dropped (allowed: %d)", len(missing), what,
                    allow_missing)
    return found, missing


def _place_image(src: Path, dest: Path, link: LinkMode) -> None:
    """Symlink or copy one image atomically (a temp name, then rename)."""
    if link == "copy":
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link-tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(src.resolve(), tmp)
    os.replace(tmp, dest)


def _place_images(found: dict[str, Path], out_dir: Path, link: LinkMode, progress: bool) -> list[str]:
    """Put every image under out_dir/images/; return the relpaths (from out_dir) written."""
    if link == "none":
        return []
    written = []
    for rel, src in tqdm(sorted(found.items()), desc=f"{link} images", disable=not progress, leave=False):
        _place_image(src, out_dir / "images" / rel, link)
        written.append(f"images/{rel}")
    return written


# ------------------------------------------------------------------------------------------- manifest

def _hash_files(out_dir: Path, relpaths: Iterable[str], progress: bool) -> dict[str, str]:
    rels = sorted(set(relpaths))
    return {rel: sha256_file(out_dir / rel) for rel in tqdm(rels, desc="hashing", disable=not progress, leave=False)}


def _write_manifest(out_dir: Path, dataset: str, config: dict[str, Any], report: PrepareReport,
                    written: dict[str, str], replaced_prefixes: tuple[str, ...]) -> Path:
    """Merge this preparation into out_dir/manifest.json (other preparations' entries are kept)."""
    path = out_dir / "manifest.json"
    old = _old_manifest(out_dir)
    files = {rel: h for rel, h in old.get("files", {}).items()
             if not rel.startswith(replaced_prefixes) and (out_dir / rel).exists()}
    files.update(written)
    names = [n for n in str(old.get("name", "")).split("+") if n] if old else []
    if dataset not in names:
        names.append(dataset)
    manifest = {
        "version": MANIFEST_VERSION,
        "name": "+".join(names),
        "seed": None,  # preparation draws no random numbers
        "config": {**old.get("config", {}), dataset: config},
        "prepare": {**old.get("prepare", {}), dataset: report.to_dict()},
        "files": dict(sorted(files.items())),
    }
    atomic_write_json(path, manifest)
    return path


_HIDDEN = ".manifest.json.in-progress"


def _old_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of earlier preparations (visible, or hidden by an unfinished run), or {}."""
    for path in (out_dir / "manifest.json", out_dir / _HIDDEN):
        if path.exists():
            old = read_json(path, "manifest")
            if not isinstance(old, dict) or not isinstance(old.get("files"), dict):
                raise UserError(f"{path} is not a data-directory manifest; prepare into an empty directory instead")
            return old
    return {}


def _begin_update(out_dir: Path) -> None:
    """Check the directory, then hide its manifest while files change: an interrupted run leaves no
    manifest.json (the directory reads as unfinished), and the next run merges from the hidden copy."""
    _old_manifest(out_dir)
    if (out_dir / "manifest.json").exists():
        os.replace(out_dir / "manifest.json", out_dir / _HIDDEN)


def _end_update(out_dir: Path) -> None:
    (out_dir / _HIDDEN).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- captions

def check_leaks(corpus: list[str], eval_items: Iterable[CaptionItem], drop: bool = True) -> tuple[list[str], LeakReport]:
    """Find corpus captions equal (after normalisation) to a val/test caption; drop them if `drop`."""
    held_out = {normalise_caption(c) for it in eval_items for c in it.captions}
    kept, leaked = [], []
    for c in corpus:
        (leaked if normalise_caption(c) in held_out else kept).append(c)
    distinct = sorted({normalise_caption(c) for c in leaked})
    report = LeakReport(found=len(leaked), dropped=len(leaked) if drop else 0, distinct=len(distinct),
                        examples=distinct[:_LEAK_EXAMPLES])
    if leaked:
        log.warning("%d training captions (%d distinct) equal a val/test caption; %s", len(leaked), len(distinct),
                    "dropped from the corpus" if drop else "KEPT in the corpus (--keep-leaks)")
    return (kept if drop else list(corpus)), report


CAPTION_DATASETS = ("coco", "flickr30k")


def _check_caption_owner(out_dir: Path, dataset: str) -> None:
    """One data directory holds one caption dataset: refuse to mix COCO and Flickr30k captions."""
    names = str(_old_manifest(out_dir).get("name", "")).split("+")
    other = [n for n in names if n in CAPTION_DATASETS and n != dataset]
    if other:
        raise UserError(f"{out_dir} already holds {other[0]} captions; prepare {dataset} into its own --out directory")


def _check_readable(out_dir: Path, splits: list[str], corpus: bool, vqa_split: str | None = None) -> None:
    """Read what was written back through maccap.data, the readers every task uses, before the manifest
    marks the directory complete (image decoding is left to `maccap-bench validate`)."""
    from maccap.data import load_corpus, load_split, load_vqa

    for split in splits:
        load_split(out_dir, split)
    if corpus:
        load_corpus(out_dir)
    if vqa_split is not None:
        load_vqa(out_dir, vqa_split)


def _source_hashes(paths: Iterable[Path | None]) -> dict[str, str]:
    return {str(p.resolve()): sha256_file(p) for p in paths if p is not None}


def _check_link(link: str, images_root: Path | None) -> None:
    if link not in LINK_MODES:
        raise UserError(f"link mode {link!r} is not one of {', '.join(LINK_MODES)}")
    if images_root is None and link != "none":
        raise UserError("--images is required to link or copy images; pass --link none to prepare captions "
                        "and the corpus only")


def prepare_captions(dataset: str, karpathy: Path | str | Iterable[Path | str], images_root: Path | str | None,
                     out_dir: Path | str, *, link: LinkMode = "symlink", allow_missing: int = 0,
                     cc3m: Path | str | None = None, train_corpus: bool = True, drop_leaks: bool = True,
                     progress: bool = True) -> PrepareReport:
    """Shared body of prepare_coco / prepare_flickr30k (see the module docstring)."""
    paths = [Path(karpathy)] if isinstance(karpathy, (str, Path)) else [Path(p) for p in karpathy]
    if not paths:
        raise UserError("no caption file given; pass --karpathy FILE (dataset_coco.json, dataset_flickr30k.json, "
                        "or reference-layout val/test files)")
    images_root = Path(images_root) if images_root is not None else None
    _check_link(link, images_root)
    out_dir = Path(out_dir)
    items = merge_sources((p, read_caption_source(p)) for p in paths)
    eval_items = [it for it in items if it.split in EVAL_SPLITS]
    if not eval_items:
        raise UserError(f"no val or test images in {', '.join(map(str, paths))}; the evaluation files need them")

    found, missing = _locate_images([(it.relpath, it.file_path, it.image_name) for it in eval_items], images_root,
                                    allow_missing, dataset)
    if images_root is not None:
        eval_items = [it for it in eval_items if it.relpath in found]

    corpus, corpus_sources = [], {}
    if train_corpus:
        train_caps = [c for it in items if it.split in TRAIN_SPLITS for c in it.captions]
        corpus += train_caps
        corpus_sources["karpathy_train_restval"] = len(train_caps)
    if cc3m is not None:
        extra = read_text_corpus(cc3m)
        corpus += extra
        corpus_sources["cc3m"] = len(extra)
    corpus, leaks = check_leaks(corpus, [it for it in items if it.split in EVAL_SPLITS], drop=drop_leaks)
    too_long = sum(len(c) > MAX_CAPTION_CHARS for c in corpus)
    if too_long:
        log.warning("%d corpus captions are longer than %d characters; dropped", too_long, MAX_CAPTION_CHARS)
        corpus = [c for c in corpus if len(c) <= MAX_CAPTION_CHARS]
    if not corpus:
        log.warning("the training corpus is empty: the caption files hold no train/restval images and no --cc3m "
                    "file was given (fine for evaluation-only data)")

    report = PrepareReport(dataset=dataset, out_dir=str(out_dir), corpus_size=len(corpus),
                           corpus_sources=corpus_sources, corpus_too_long_dropped=too_long, leaks=leaks, missing_images=missing, link=link,
                           images_root=str(images_root.resolve()) if images_root else None,
                           sources=_source_hashes([*paths, Path(cc3m) if cc3m else None]))
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_caption_owner(out_dir, dataset)
    _begin_update(out_dir)
    written = []
    for split in EVAL_SPLITS:
        entries = [it.entry() for it in eval_items if it.split == split]
        if entries:
            atomic_write_json(out_dir / f"captions_{split}.json", entries)
            written.append(f"captions_{split}.json")
            report.splits[split] = {"images": len(entries), "captions": sum(len(e["captions"]) for e in entries)}
        else:  # a split left over from an earlier preparation of this directory
            (out_dir / f"captions_{split}.json").unlink(missing_ok=True)
    atomic_write_json(out_dir / "corpus_train.json", corpus)
    written.append("corpus_train.json")
    written += _place_images(found, out_dir, link, progress)
    report.files_written = len(written)
    _check_readable(out_dir, list(report.splits), corpus=bool(corpus))
    config = {"karpathy": [str(p) for p in paths], "images_root": report.images_root, "link": link,
              "allow_missing": allow_missing, "cc3m": str(cc3m) if cc3m else None, "train_corpus": train_corpus,
              "drop_leaks": drop_leaks}
    _write_manifest(out_dir, dataset, config, report, _hash_files(out_dir, written, progress),
                    replaced_prefixes=("captions_", "corpus_train.json"))
    _end_update(out_dir)
    log.info("prepared %s in %s: %s, corpus %d captions, %d leaks %s", dataset, out_dir, report.splits,
             len(corpus), leaks.found, "dropped" if drop_leaks else "kept")
    return report


def prepare_coco(karpathy_json: Path | str | Iterable[Path | str], images_root: Path | str | None,
                 out_dir: Path | str, link: LinkMode = "symlink", **kw: Any) -> PrepareReport:
    """COCO Karpathy splits: dataset_coco.json (or reference val/test files) + the val2014 image folder.

    `images_root` is the folder that holds val2014/ (or the val2014 folder itself).
    """
    return prepare_captions("coco", karpathy_json, images_root, out_dir, link=link, **kw)


def prepare_flickr30k(karpathy_json: Path | str | Iterable[Path | str], images_root: Path | str | None,
                      out_dir: Path | str, link: LinkMode = "symlink", **kw: Any) -> PrepareReport:
    """Flickr30k Karpathy splits: dataset_flickr30k.json (or reference files) + the flickr30k-images folder."""
    return prepare_captions("flickr30k", karpathy_json, images_root, out_dir, link=link, **kw)


# ------------------------------------------------------------------------------------------------ VQA

def coco_image_name(image_id: int, subset: str = "val2014") -> str:
    return f"COCO_{subset}_{image_id:012d}.jpg"


def _vqa_readers() -> tuple[Callable[..., list[dict]], Callable[..., list[dict]], Callable[..., None],
                            Callable[..., None]]:
    from maccap.metrics.vqa import read_annotations, read_questions, write_annotations, write_questions

    return read_questions, read_annotations, write_questions, write_annotations


def _restrict_to_captions(out_dir: Path, split: str, questions: list[dict], annotations: list[dict]
                          ) -> tuple[list[dict], list[dict], int]:
    """Keep the questions about images of captions_{split}.json: the VQA task reads images through it."""
    caps = out_dir / f"captions_{split}.json"
    if not caps.exists():
        log.warning("%s does not exist: the VQA task finds images through captions_%s.json, so prepare coco into "
                    "%s first (or pass --no-restrict knowingly); keeping all %d questions", caps, split, out_dir,
                    len(questions))
        return questions, annotations, 0
    entries = read_json(caps, "caption file")
    if not isinstance(entries, list):
        raise UserError(f"caption file {caps}: expected a JSON list of entries")
    ids = {int(e["image_id"]) for e in entries if isinstance(e, dict) and isinstance(e.get("image_id"), int)}
    kept_q = [q for q in questions if int(q["image_id"]) in ids]
    if not kept_q:
        raise UserError(f"none of the {len(questions)} VQA questions asks about an image of {caps} (matched by "
                        "image_id); use the VQAv2 split whose images the caption split holds (COCO Karpathy val/test "
                        "images come from val2014), or pass --no-restrict")
    kept_ids = {q["question_id"] for q in kept_q}
    return kept_q, [a for a in annotations if a["question_id"] in kept_ids], len(questions) - len(kept_q)


def prepare_vqav2(questions_json: Path | str, annotations_json: Path | str, images_root: Path | str | None,
                  out_dir: Path | str, split: str = "test", *, image_subset: str = "val2014",
                  restrict_to_captions: bool = True, link: LinkMode = "symlink", allow_missing: int = 0,
                  progress: bool = True) -> PrepareReport:
    """Validate VQAv2 questions/annotations and write them as vqa/{questions,annotations}_{split}.json.

    The VQA task looks images up by image_id in captions_{split}.json of the same directory, so by default
    only questions about those images are kept (prepare coco first; Karpathy test images all come from
    val2014, so VQAv2 val questions cover them). Each question also gets `image_name` and `file_path`
    (COCO_{subset}_{id:012d}.jpg under images/{subset}/); images are linked like COCO's.
    """
    if not split or "/" in split or split.startswith("."):
        raise UserError(f"--split {split!r} must be a plain name such as val")
    read_questions, read_annotations, write_questions, write_annotations = _vqa_readers()
    qpath, apath, out_dir = Path(questions_json), Path(annotations_json), Path(out_dir)
    images_root = Path(images_root) if images_root is not None else None
    _check_link(link, images_root)
    questions = read_questions(qpath)
    annotations = read_annotations(apath, questions)
    answered = {a["question_id"] for a in annotations}
    unanswered = [q["question_id"] for q in questions if q["question_id"] not in answered]
    if unanswered:
        raise UserError(f"VQA annotations file {apath}: {len(unanswered)} questions of {qpath} have no annotation "
                        f"(first question_id {unanswered[0]}); use the matching questions/annotations pair")
    outside = 0
    if restrict_to_captions:
        questions, annotations, outside = _restrict_to_captions(out_dir, split, questions, annotations)
    image_ids = sorted({int(q["image_id"]) for q in questions})
    rels = {iid: f"{image_subset}/{coco_image_name(iid, image_subset)}" for iid in image_ids}
    found, missing = _locate_images([(rels[i], image_subset, coco_image_name(i, image_subset)) for i in image_ids],
                                    images_root, allow_missing, "VQAv2")
    if missing:
        gone = {i for i in image_ids if rels[i] not in found}
        questions = [q for q in questions if int(q["image_id"]) not in gone]
        annotations = [a for a in annotations if int(a["image_id"]) not in gone]
    questions = [{**q, "image_name": coco_image_name(int(q["image_id"]), image_subset), "file_path": image_subset}
                 for q in questions]
    qraw, araw = read_json(qpath, "VQA questions file"), read_json(apath, "VQA annotations file")
    info_q = {k: v for k, v in qraw.items() if k != "questions"}
    info_a = {k: v for k, v in araw.items() if k != "annotations"}

    report = PrepareReport(dataset="vqav2", out_dir=str(out_dir), missing_images=missing, link=link,
                           images_root=str(images_root.resolve()) if images_root else None,
                           sources=_source_hashes([qpath, apath]))
    report.splits[split] = {"images": len(image_ids) - len(missing), "questions": len(questions)}
    report.questions_outside_captions = outside
    out_dir.mkdir(parents=True, exist_ok=True)
    _begin_update(out_dir)
    qrel, arel = f"vqa/questions_{split}.json", f"vqa/annotations_{split}.json"
    write_questions(out_dir / qrel, questions, **info_q)
    write_annotations(out_dir / arel, annotations, **info_a)
    written = [qrel, arel] + _place_images(found, out_dir, link, progress)
    report.files_written = len(written)
    _check_readable(out_dir, [], corpus=False, vqa_split=split)
    config = {"questions": str(qpath), "annotations": str(apath), "images_root": report.images_root,
              "split": split, "image_subset": image_subset, "link": link, "allow_missing": allow_missing}
    _write_manifest(out_dir, "vqav2", config, report, _hash_files(out_dir, written, progress),
                    replaced_prefixes=(qrel, arel))
    _end_update(out_dir)
    log.info("prepared VQAv2 %s in %s: %d questions on %d images", split, out_dir, len(questions),
             report.splits[split]["images"])
    return report
