"""Readers for the caption sources users have: Karpathy's dataset_*.json, the reference val/test
layout, and plain-text corpora such as CC3M's caption TSV.

Every malformed input becomes a UserError that names the file and the offending field
(`images[12].sentences`), so a user can fix the file instead of reading a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from maccap.errors import UserError
from maccap.io import read_json

KARPATHY_SPLITS = ("train", "restval", "val", "test")
TRAIN_SPLITS = ("train", "restval")  # restval belongs to training in every Karpathy-split paper
EVAL_SPLITS = ("val", "test")
_DIGITS = re.compile(r"\d+")


@dataclass
class CaptionItem:
    """One image with its captions, as read from any supported source."""

    split: str
    image_name: str
    file_path: str | None
    captions: list[str]
    image_id: int
    where: str  # "FILE: images[3]", for error messages

    @property
    def key(self) -> tuple[str, str]:
        return (self.file_path or "", self.image_name)

    @property
    def relpath(self) -> str:
        return f"{self.file_path}/{self.image_name}" if self.file_path else self.image_name

    def entry(self) -> dict[str, Any]:
        """The Karpathy-style entry written into captions_{split}.json."""
        out: dict[str, Any] = {"split": self.split, "image_name": self.image_name, "captions": self.captions,
                               "image_id": self.image_id}
        if self.file_path:
            out["file_path"] = self.file_path
        return out


def image_id_from_name(name: str) -> int | None:
    """COCO_val2014_000000391895.jpg -> 391895; 1007129816.jpg -> 1007129816 (last digit run)."""
    runs = _DIGITS.findall(Path(name).stem)
    return int(runs[-1]) if runs else None


def normalise_caption(text: str) -> str:
    """The form the leak check compares: lower case, single spaces, no trailing period or spaces."""
    return " ".join(text.lower().split()).rstrip(" .")


def _fail(path: Path, field: str, expected: str, got: Any = None) -> UserError:
    shown = "" if got is None else f", got {type(got).__name__} {str(got)[:60]!r}"
    return UserError(f"caption file {path}: field {field} must be {expected}{shown}")


def _str_field(path: Path, row: dict, where: str, key: str, required: bool = True) -> str | None:
    if key not in row:
        if required:
            raise UserError(f"caption file {path}: {where} is missing field {key!r}")
        return None
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{where}.{key}", "a non-empty string", value)
    return value.strip()


def _path_field(path: Path, row: dict, where: str, key: str, required: bool = True) -> str | None:
    """A file name or folder that stays inside images/: relative, no '..', no backslashes."""
    value = _str_field(path, row, where, key, required)
    if value is not None:
        parts = value.split("/")
        if value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
            raise _fail(path, f"{where}.{key}", "a relative path without '.', '..' or empty parts", value)
    return value


def _split_field(path: Path, row: dict, where: str) -> str:
    split = _str_field(path, row, where, "split")
    if split not in KARPATHY_SPLITS:
        raise _fail(path, f"{where}.split", f"one of {', '.join(KARPATHY_SPLITS)}", split)
    return split  # type: ignore[return-value]


def _sentence_text(path: Path, where: str, sent: Any) -> str:
    if not isinstance(sent, dict):
        raise _fail(path, where, "an object with 'raw' or 'tokens'", sent)
    raw = sent.get("raw")
    if isinstance(raw, str) and raw.strip():
        return " ".join(raw.split())
    tokens = sent.get("tokens")
    if isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens):
        return " ".join(tokens)
    raise _fail(path, f"{where}.raw", "a non-empty string (or 'tokens' a list of strings)", raw)


def _image_id(path: Path, row: dict, where: str, name: str) -> int:
    if "cocoid" in row:
        cid = row["cocoid"]
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise _fail(path, f"{where}.cocoid", "an integer", cid)
        return cid
    if "image_id" in row:
        iid = row["image_id"]
        if isinstance(iid, bool) or not isinstance(iid, int):
            raise _fail(path, f"{where}.image_id", "an integer", iid)
        return iid
    derived = image_id_from_name(name)
    if derived is None:
        raise UserError(f"caption file {path}: {where} has no 'cocoid' and its image name {name!r} holds no digits "
                        "to derive an image id from")
    return derived


def _from_karpathy(path: Path, data: dict) -> list[CaptionItem]:
    if "images" not in data:
        raise UserError(f"caption file {path}: missing field 'images' (expected Karpathy's dataset_*.json layout "
                        "{\"images\": [...], \"dataset\": ...} or a JSON list of {split, image_name, captions})")
    images = data["images"]
    if not isinstance(images, list):
        raise _fail(path, "images", "a list", images)
    items = []
    for i, row in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(row, dict):
            raise _fail(path, where, "an object", row)
        name = _path_field(path, row, where, "filename")
        split = _split_field(path, row, where)
        sents = row.get("sentences")
        if not isinstance(sents, list):
            raise _fail(path, f"{where}.sentences", "a list of {raw, tokens} objects", sents)
        if not sents:
            raise _fail(path, f"{where}.sentences", "a non-empty list")
        caps = [_sentence_text(path, f"{where}.sentences[{j}]", s) for j, s in enumerate(sents)]
        file_path = _path_field(path, row, where, "filepath", required=False)
        items.append(CaptionItem(split, name, file_path, caps, _image_id(path, row, where, name),  # type: ignore[arg-type]
                                 f"{path}: {where}"))
    return items


def _from_reference(path: Path, data: list) -> list[CaptionItem]:
    items = []
    for i, row in enumerate(data):
        where = f"[{i}]"
        if not isinstance(row, dict):
            raise _fail(path, f"entry {where}", "an object {split, image_name, file_path?, captions}", row)
        name = _path_field(path, row, f"entry {where}", "image_name")
        split = _split_field(path, row, f"entry {where}")
        caps = row.get("captions")
        if not isinstance(caps, list) or not caps:
            raise _fail(path, f"entry {where}.captions", "a non-empty list of strings", caps)
        for j, c in enumerate(caps):
            if not isinstance(c, str) or not c.strip():
                raise _fail(path, f"entry {where}.captions[{j}]", "a non-empty string", c)
        file_path = _path_field(path, row, f"entry {where}", "file_path", required=False)
        items.append(CaptionItem(split, name, file_path, [" ".join(c.split()) for c in caps],  # type: ignore[arg-type]
                                 _image_id(path, row, f"entry {where}", name), f"{path}: entry {where}"))
    return items


def _check_unique_within(path: Path, items: list[CaptionItem]) -> None:
    by_key: dict[tuple[str, str], CaptionItem] = {}
    by_id: dict[int, CaptionItem] = {}
    for it in items:
        if it.key in by_key:
            raise UserError(f"caption file {path}: duplicated image {it.relpath!r} ({by_key[it.key].where.split(': ')[1]} "
                            f"and {it.where.split(': ')[1]}); each image must appear once")
        if it.image_id in by_id:
            raise UserError(f"caption file {path}: duplicated image id {it.image_id} ({by_id[it.image_id].relpath} at "
                            f"{by_id[it.image_id].where.split(': ')[1]} and {it.relpath} at {it.where.split(': ')[1]})")
        by_key[it.key] = it
        by_id[it.image_id] = it


def read_caption_source(path: str | Path) -> list[CaptionItem]:
    """Read a Karpathy dataset_*.json or a reference-layout list; validate every field."""
    path = Path(path)
    data = read_json(path, "caption file")
    if isinstance(data, dict):
        items = _from_karpathy(path, data)
    elif isinstance(data, list):
        items = _from_reference(path, data)
    else:
        raise UserError(f"caption file {path}: expected a JSON object with 'images' (Karpathy layout) or a JSON list "
                        f"(reference layout), got {type(data).__name__}")
    if not items:
        raise UserError(f"caption file {path} holds no images")
    _check_unique_within(path, items)
    return items


def merge_sources(sources: Iterable[tuple[Path, list[CaptionItem]]]) -> list[CaptionItem]:
    """Merge items from several files; an image repeated identically is kept once, a conflict is an error.

    Also enforces that no image (by name or id) sits in two splits: that would put evaluation images into
    the training corpus.
    """
    merged: dict[tuple[str, str], CaptionItem] = {}
    by_id: dict[int, CaptionItem] = {}
    for _path, items in sources:
        for it in items:
            old = merged.get(it.key)
            if old is not None:
                if old.split != it.split:
                    raise UserError(f"image {it.relpath} is in split {old.split!r} ({old.where}) and in split "
                                    f"{it.split!r} ({it.where}); an image must belong to one split only")
                if old.captions != it.captions or old.image_id != it.image_id:
                    raise UserError(f"image {it.relpath} appears twice with different captions or ids "
                                    f"({old.where} and {it.where})")
                continue
            other = by_id.get(it.image_id)
            if other is not None:
                cross = f" across splits {other.split!r}/{it.split!r}" if other.split != it.split else ""
                raise UserError(f"image id {it.image_id} is used by {other.relpath} ({other.where}) and by "
                                f"{it.relpath} ({it.where}){cross}; image ids must be unique and never cross splits")
            merged[it.key] = it
            by_id[it.image_id] = it
    return list(merged.values())


def read_text_corpus(path: str | Path) -> list[str]:
    """Captions from a user file: CC3M-style TSV (caption in the first column), plain text (one per line),
    or a JSON list of strings."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path, "corpus file")
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise UserError(f"corpus file {path}: expected a JSON list of caption strings")
        lines = data
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"corpus file not found: {path}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"corpus file {path} is not UTF-8 (byte {e.start})") from None
        tsv = path.suffix.lower() in (".tsv", ".tab")
        lines = [ln.split("\t", 1)[0] if tsv else ln for ln in text.splitlines()]
        if tsv and lines and lines[0].strip().lower() == "caption":  # optional header row
            lines = lines[1:]
    out = [" ".join(c.split()) for c in lines if c.strip()]
    if not out:
        raise UserError(f"corpus file {path} holds no captions")
    return out
