"""Reading and validating data directories: captions, images, the text corpus, VQA files, manifests.

One reader for the quickstart world and for prepared real data (layout in docs/architecture.md).
Every problem becomes a UserError that names the file, the field and what was expected.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from maccap.errors import UserError
from maccap.io import dumps_json, read_json, sha256_bytes, sha256_file

MAX_CAPTION_CHARS = 500
MAX_IMAGE_PIXELS = 50_000_000  # above this an image is refused as a likely decompression bomb


@dataclass
class ImageRecord:
    image_id: int
    image_name: str
    path: Path
    captions: list[str]
    scene: list[dict[str, Any]] | None = None
    caption_objects: list[list[int]] | None = None


@dataclass
class CaptionSplit:
    name: str
    source: Path
    records: list[ImageRecord]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.records[i]

    def references(self) -> dict[str, list[str]]:
        """image_id (as str) -> reference captions, the shape caption metrics take."""
        return {str(r.image_id): r.captions for r in self.records}


def _image_id_from_name(name: str, where: str) -> int:
    digits = re.findall(r"\d+", name)
    if not digits:
        raise UserError(f"{where}: no 'image_id' and no digits in image_name {name!r} to derive one from")
    return int(digits[-1])


def _check_captions(caps: Any, where: str) -> list[str]:
    if not isinstance(caps, list) or not caps:
        raise UserError(f"{where}: field 'captions' must be a non-empty list of strings")
    for j, c in enumerate(caps):
        if not isinstance(c, str):
            raise UserError(f"{where}: captions[{j}] is {type(c).__name__}, expected a string")
        if not c.strip():
            raise UserError(f"{where}: captions[{j}] is empty")
        if len(c) > MAX_CAPTION_CHARS:
            raise UserError(f"{where}: captions[{j}] has {len(c)} characters, more than {MAX_CAPTION_CHARS}")
    return caps


def load_karpathy(path: str | Path, split: str | None = None, images_root: str | Path | None = None) -> CaptionSplit:
    """A Karpathy-style caption file: a JSON list of {split, image_name, file_path?, captions, image_id?}.

    Image paths resolve as images_root/file_path/image_name (images_root defaults to <file dir>/images).
    """
    path = Path(path)
    data = read_json(path, "caption file")
    if not isinstance(data, list):
        raise UserError(f"caption file {path}: expected a JSON list of image entries, got {type(data).__name__}")
    root = Path(images_root) if images_root is not None else path.parent / "images"
    records: list[ImageRecord] = []
    seen_names: set[str] = set()
    seen_ids: set[int] = set()
    for i, e in enumerate(data):
        where = f"caption file {path} entry {i}"
        if not isinstance(e, dict):
            raise UserError(f"{where}: expected an object, got {type(e).__name__}")
        if split is not None and e.get("split", split) != split:
            continue
        name = e.get("image_name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: field 'image_name' must be a non-empty string")
        caps = _check_captions(e.get("captions"), where)
        image_id = e.get("image_id")
        if image_id is None:
            image_id = _image_id_from_name(name, where)
        elif not isinstance(image_id, int) or isinstance(image_id, bool):
            raise UserError(f"{where}: field 'image_id' must be an integer")
        rel = Path(e["file_path"]) / name if e.get("file_path") else Path(name)
        key = str(rel)
        if key in seen_names:
            raise UserError(f"{where}: image {key!r} appears twice")
        if image_id in seen_ids:
            raise UserError(f"{where}: image_id {image_id} appears twice")
        seen_names.add(key)
        seen_ids.add(image_id)
        records.append(ImageRecord(image_id, name, root / rel, caps, e.get("scene"), e.get("caption_objects")))
    if not records:
        raise UserError(f"caption file {path}: no entries" + (f" with split {split!r}" if split else ""))
    return CaptionSplit(split or "all", path, records)


def load_split(data_dir: str | Path, split: str, check_images: bool = False) -> CaptionSplit:
    data_dir = Path(data_dir)
    path = data_dir / f"captions_{split}.json"
    if not path.exists():
        have = sorted(p.stem.removeprefix("captions_") for p in data_dir.glob("captions_*.json"))
        raise UserError(f"split {split!r} not found: {path} does not exist (splits here: {', '.join(have) or 'none'})")
    cs = load_karpathy(path, None, data_dir / "images")
    cs.name = split
    if (data_dir / "images" / split / "deferred.json").is_file():  # a quickstart split rendered on first use
        from maccap.world.generate import render_deferred

        render_deferred(data_dir, split)
    if check_images:
        for r in cs.records:
            load_image(r.path)
    return cs


def load_image(path: str | Path) -> Image.Image:
    """An RGB image; greyscale, palette, CMYK and alpha images are converted, broken ones refused."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"image {path} is empty (0 bytes); expected a PNG or JPEG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise UserError(f"image {path} is {im.width}x{im.height}, more than {MAX_IMAGE_PIXELS} pixels; "
                                    f"resize it first")
                im.load()
                return _to_rgb(im, path)
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"image {path} is too large (decompression bomb guard); resize it first") from None
    except UnidentifiedImageError:
        raise UserError(f"image {path} is not a readable image; expected a PNG or JPEG file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"image {path} is corrupt or truncated ({e}); expected a complete PNG or JPEG") from None


def _to_rgb(im: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB. 16-bit greyscale is scaled down (PIL's convert would clip it to white); float is refused."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        raise UserError(f"image {path} has floating-point pixels (mode F); expected an 8- or 16-bit PNG or JPEG")
    return im.convert("RGB")


def load_corpus(data_dir: str | Path) -> list[str]:
    """The text-only training corpus: a JSON list of caption strings."""
    path = Path(data_dir) / "corpus_train.json"
    data = read_json(path, "training corpus")
    if not isinstance(data, list):
        raise UserError(f"training corpus {path}: expected a JSON list of caption strings, got {type(data).__name__}")
    for i, c in enumerate(data):
        if not isinstance(c, str):
            raise UserError(f"training corpus {path} item {i}: expected a string, got {type(c).__name__}")
        if not c.strip():
            raise UserError(f"training corpus {path} item {i}: empty caption")
        if len(c) > MAX_CAPTION_CHARS:
            raise UserError(f"training corpus {path} item {i}: {len(c)} characters, more than {MAX_CAPTION_CHARS}")
    if not data:
        raise UserError(f"training corpus {path} is an empty list")
    return data


def load_vqa(data_dir: str | Path, split: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Questions and annotations of a split, validated against each other (VQAv2 layout)."""
    from maccap.metrics.vqa import read_annotations, read_questions

    vqa_dir = Path(data_dir) / "vqa"
    questions = read_questions(vqa_dir / f"questions_{split}.json")
    annotations = read_annotations(vqa_dir / f"annotations_{split}.json", questions)
    return questions, annotations


def split_hash(data_dir: str | Path, split: str) -> str:
    """Content hash of one split: its caption file plus the checksums of the images it lists."""
    data_dir = Path(data_dir)
    manifest = read_json(data_dir / "manifest.json", "manifest")
    files = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    files = {**files, **_split_manifest(data_dir, split)}
    cap = f"captions_{split}.json"
    part = {cap: files.get(cap) or sha256_file(data_dir / cap)}
    for r in load_split(data_dir, split):
        rel = r.path.relative_to(data_dir).as_posix()
        part[rel] = files.get(rel) or sha256_file(r.path)
    return sha256_bytes(dumps_json(part).encode())


def _split_manifest(data_dir: Path, split: str) -> dict[str, str]:
    """Checksums of a deferred split's images, written when they were rendered (empty otherwise)."""
    path = data_dir / "images" / split / "manifest.json"
    if not path.is_file():
        return {}
    files = read_json(path, "split image manifest").get("files")
    if not isinstance(files, dict):
        raise UserError(f"{path}: field 'files' must map relative paths to sha256")
    return files


def verify_manifest(data_dir: str | Path) -> list[str]:
    """Files that are missing or differ from the manifests (the dataset's, and rendered deferred splits')."""
    data_dir = Path(data_dir)
    manifest = read_json(data_dir / "manifest.json", "manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return [f"{data_dir / 'manifest.json'}: field 'files' must map relative paths to sha256"]
    for split in manifest.get("deferred_images") or []:
        files = {**files, **_split_manifest(data_dir, str(split))}
    problems = []
    for rel, digest in files.items():
        p = data_dir / rel
        if not p.exists():
            problems.append(f"{p}: listed in the manifest but missing")
        elif sha256_file(p) != digest:
            problems.append(f"{p}: checksum mismatch (sha256 differs from the manifest)")
    return problems


def validate_data_dir(data_dir: str | Path, check_images: bool = True) -> list[str]:
    """Every problem found in a data directory, as messages; an empty list means it is usable."""
    data_dir = Path(data_dir)
    problems: list[str] = []

    def attempt(fn, *args) -> Any:
        try:
            return fn(*args)
        except UserError as e:
            problems.append(str(e))
            return None

    if (data_dir / "manifest.json").exists():
        problems.extend(attempt(verify_manifest, data_dir) or [])
    else:
        problems.append(f"{data_dir / 'manifest.json'}: missing (written last by `world` or `data prepare`)")
    splits = sorted(p.stem.removeprefix("captions_") for p in data_dir.glob("captions_*.json"))
    if "test" not in splits:
        problems.append(f"{data_dir}: no captions_test.json (the evaluation split)")
    for split in splits:
        cs = attempt(load_split, data_dir, split)
        if cs is not None and check_images:
            for r in cs.records:
                if attempt(load_image, r.path) is None and len(problems) > 50:
                    return problems
    if not (data_dir / "corpus_train.json").exists():
        problems.append(f"{data_dir / 'corpus_train.json'}: missing (the text-only training corpus)")
    else:
        attempt(load_corpus, data_dir)
    for q in sorted((data_dir / "vqa").glob("questions_*.json")):
        attempt(load_vqa, data_dir, q.stem.removeprefix("questions_"))
    return problems
