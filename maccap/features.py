"""Batched feature extraction with an on-disk cache (safetensors shards + a JSON sidecar of checksums).

Cache key: backbone name and weights id, data hash (sha256 of the split's caption file or of the texts),
kind, and the cache format version. Each entry is a directory holding shard files written one at a
time (so corpora larger than memory stream to disk) and `meta.json`, written last, with every shard's
sha256. A read verifies the checksums; a corrupt, truncated or foreign-version entry is recomputed with
a warning. Writes are atomic, so a killed run leaves no entry that looks complete. A file lock per entry
lets concurrent processes share one cache directory: the first computes, the rest wait and read.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from filelock import FileLock
from tqdm import tqdm

from maccap.backbones import Backbone, ImageTokens
from maccap import faults
from maccap.errors import UserError
from maccap.io import atomic_path, atomic_write_json, hash_config, read_json, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

CACHE_VERSION = 1
SHARD_ROWS = 4096  # rows per shard file


def texts_hash(texts: Sequence[str]) -> str:
    h = sha256_bytes("\x1f".join(texts).encode("utf-8"))
    return f"{len(texts)}:{h}"


def split_data_hash(data_dir: str | Path, split: str) -> str:
    path = Path(data_dir) / f"captions_{split}.json"
    if not path.is_file():
        raise UserError(f"caption file {path} not found; expected captions_{split}.json in the data directory")
    return sha256_file(path)


def _entry_dir(cache_dir: str | Path, backbone: Backbone, kind: str, data_hash: str) -> Path:
    key = hash_config({"backbone": backbone.name, "weights": backbone.weights_id, "data": data_hash,
                       "kind": kind, "version": CACHE_VERSION})
    slug = "".join(c if c.isalnum() or c in "-._" else "_" for c in backbone.name)
    return Path(cache_dir) / "features" / f"{slug}-{kind}-{key}"


def _meta_expected(backbone: Backbone, kind: str, data_hash: str) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "backbone": backbone.name, "weights_id": backbone.weights_id,
            "kind": kind, "data_hash": data_hash}


def _read_entry(entry: Path, expected: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Load and concatenate the shards if the sidecar matches and every checksum verifies, else None."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path, "feature cache sidecar")
    except UserError as e:
        log.warning("feature cache %s: %s; recomputing", entry, e)
        return None
    if any(meta.get(k) != v for k, v in expected.items()):
        log.warning("feature cache %s belongs to another version/backbone/data; recomputing", entry)
        return None
    from safetensors.torch import load_file

    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for shard in meta["shards"]:
            path = entry / shard["file"]
            if sha256_file(path) != shard["sha256"]:
                log.warning("feature cache %s: checksum mismatch in %s; recomputing", entry, shard["file"])
                return None
            for k, v in load_file(str(path)).items():
                parts.setdefault(k, []).append(v)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        log.warning("feature cache %s unreadable (%s); recomputing", entry, type(e).__name__)
        return None
    out = {k: torch.cat(v) for k, v in parts.items()}
    if any(len(v) != meta.get("rows") for v in out.values()):
        log.warning("feature cache %s has the wrong number of rows; recomputing", entry)
        return None
    return out


def _write_entry(entry: Path, expected: dict[str, Any], chunks: Iterator[dict[str, torch.Tensor]],
                 extra: dict[str, Any]) -> None:
    """Stream chunks into shard files of SHARD_ROWS rows; write the sidecar last."""
    from safetensors.torch import save_file

    if entry.exists():
        shutil.rmtree(entry)
    entry.mkdir(parents=True, exist_ok=True)
    shards, buf, rows = [], {}, 0

    def flush(final: bool) -> None:
        nonlocal buf
        n = len(next(iter(buf.values()))) if buf else 0
        while n >= SHARD_ROWS or (final and n > 0):
            take = min(n, SHARD_ROWS)
            part = {k: v[:take].contiguous() for k, v in buf.items()}
            buf = {k: v[take:] for k, v in buf.items()}
            name = f"shard{len(shards):05d}.safetensors"
            with atomic_path(entry / name) as tmp:
                save_file(part, str(tmp))
            shards.append({"file": name, "rows": take, "sha256": sha256_file(entry / name)})
            faults.checkpoint("feature-shard")
            n -= take

    for chunk in chunks:
        buf = {k: torch.cat([buf[k], v]) if k in buf else v for k, v in chunk.items()}
        rows += len(next(iter(chunk.values())))
        flush(final=False)
    flush(final=True)
    atomic_write_json(entry / "meta.json", {**expected, "rows": rows, "shards": shards, **extra})


def _cached(cache_dir: str | Path, backbone: Backbone, kind: str, data_hash: str,
            compute: Callable[[], Iterator[dict[str, torch.Tensor]]], extra: dict[str, Any]) -> dict[str, torch.Tensor]:
    entry = _entry_dir(cache_dir, backbone, kind, data_hash)
    expected = _meta_expected(backbone, kind, data_hash)
    hit = _read_entry(entry, expected)
    if hit is not None:
        log.debug("feature cache hit %s", entry)
        return hit
    entry.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent workers (sweep shards, torchrun ranks) share the cache: one computes, the others wait
    # for it and read its entry. Readers need no lock: the sidecar is written last and verifies every shard.
    with FileLock(str(entry.parent / f".{entry.name}.lock")):
        hit = _read_entry(entry, expected)
        if hit is not None:
            log.debug("feature cache %s written by another worker", entry)
            return hit
        _write_entry(entry, expected, compute(), extra)
    out = _read_entry(entry, expected)
    if out is None:
        raise UserError(f"feature cache {entry} could not be read back after writing; check the disk")
    return out


def text_features(backbone: Backbone, texts: Sequence[str], cache_dir: str | Path, batch_size: int = 256,
                  progress: bool = True) -> torch.Tensor:
    """Normalised text features [N, D] (float32), cached."""
    texts = list(texts)

    def compute() -> Iterator[dict[str, torch.Tensor]]:
        for i in tqdm(range(0, len(texts), batch_size), desc="text features", disable=not progress):
            yield {"text": backbone.encode_text(texts[i:i + batch_size]).cpu().float()}

    if not texts:
        return torch.zeros(0, backbone.embed_dim)
    return _cached(cache_dir, backbone, "text", texts_hash(texts), compute, {"n": len(texts)})["text"].float()


def image_tokens(backbone: Backbone, data_dir: str | Path, split: str, cache_dir: str | Path, batch_size: int = 64,
                 progress: bool = True) -> tuple[list[str], ImageTokens]:
    """Image names of the split (file order) and their ImageTokens (tokens and attn stored as float16)."""
    data_dir = Path(data_dir)
    entries = _split_entries(data_dir, split)
    names = [e["image_name"] for e in entries]

    def compute() -> Iterator[dict[str, torch.Tensor]]:
        for i in tqdm(range(0, len(entries), batch_size), desc=f"image tokens {split}", disable=not progress):
            imgs = [_open_image(data_dir, e) for e in entries[i:i + batch_size]]
            it = backbone.encode_image_tokens(imgs)
            yield {"cls": it.cls.cpu().float(), "tokens": it.tokens.cpu().half(), "attn": it.attn.cpu().half()}

    out = _cached(cache_dir, backbone, "image_tokens", split_data_hash(data_dir, split), compute,
                  {"split": split, "names": names})
    return names, ImageTokens(cls=out["cls"].float(), tokens=out["tokens"].float(), attn=out["attn"].float())


def _split_entries(data_dir: Path, split: str) -> list[dict[str, Any]]:
    from maccap.clip_train import split_entries

    return split_entries(Path(data_dir), split)


def _open_image(data_dir: Path, entry: dict[str, Any]) -> Any:
    path = Path(entry["path"]) if "path" in entry else data_dir / "images" / entry.get("file_path", "") / entry["image_name"]
    try:
        from maccap.data import load_image
    except ImportError:
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError(f"image {path} cannot be read: {e}; expected an RGB image file") from None
    return load_image(path)
