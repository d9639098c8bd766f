"""Writing a quickstart world to disk in the layouts the real datasets use.

Every item draws from its own random stream (seed, split, index), so the bytes of an item depend on
nothing else, and the same seed gives the same files. The world is built in a sibling `.partial`
directory and renamed into place with its manifest last, so an interrupted generation never leaves a
directory that looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from maccap import faults
from maccap.errors import UserError
from maccap.io import atomic_write_json, dumps_json, read_json, sha256_bytes
from maccap.workers import cpu_cores, die_with_parent
from maccap.seed import check_seed
from maccap.world.captions import scene_captions
from maccap.world.config import ID_OFFSETS, SPLIT_CODES, WORLD_NAME, WORLD_VERSION, WorldConfig
from maccap.world.questions import scene_questions
from maccap.world.scene import encode_png, render_scene, sample_scene

log = logging.getLogger(__name__)
VQA_SPLITS = ("val", "test")
DEFERRED_SPLITS = ("clip",)


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def image_name(split: str, index: int) -> str:
    return f"qs_{split}_{index:06d}.png"


def _write(root: Path, rel: str, data: bytes, files: dict[str, str]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)  # the manifest, written last, is what makes the directory trusted
    files[rel] = sha256_bytes(data)


def _entry(split: str, seed: int, config: WorldConfig, i: int) -> tuple[np.random.Generator, list, dict[str, Any]]:
    """The scene and caption entry of image i of a split, with its random stream positioned for rendering."""
    rng = item_rng(seed, split, i)
    scene = sample_scene(rng, config)
    caps, objs = scene_captions(scene, rng, config.captions_per_image)
    entry = {"split": split, "image_name": image_name(split, i), "file_path": split,
             "image_id": ID_OFFSETS[split] + i, "captions": caps, "caption_objects": objs, "scene": scene}
    return rng, scene, entry


def _image_item(root: Path, split: str, seed: int, config: WorldConfig, i: int, render: bool = True
                ) -> tuple[str, str | None, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Image i of a split: (file, sha256 or None when not rendered, caption entry, questions, annotations).

    Everything comes from the item's own random stream, so items can be made in any order or process,
    and an image rendered later (a deferred split) has the bytes it would have had at once.
    """
    rng, scene, entry = _entry(split, seed, config, i)
    rel, files = f"images/{split}/{entry['image_name']}", {}
    if not render:
        return rel, None, entry, [], []
    img = render_scene(scene, config.image_size, rng, supersample=config.supersample)
    _write(root, rel, encode_png(img, config.png_compress_level), files)
    image_id = entry["image_id"]
    questions, annotations = [], []
    if split in VQA_SPLITS:
        for k, q in enumerate(scene_questions(scene, rng, config.questions_per_image)):
            qid = image_id * 10 + k
            questions.append({"image_id": image_id, "question": q["question"], "question_id": qid})
            annotations.append({
                "question_id": qid, "image_id": image_id, "answer_type": q["answer_type"],
                "question_type": q["question_type"], "multiple_choice_answer": q["multiple_choice_answer"],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                            for j, a in enumerate(q["answers"])]})
    return rel, files[rel], entry, questions, annotations


def _image_split(root: Path, split: str, seed: int, config: WorldConfig, files: dict[str, str],
                 progress: bool, pool: Any = None, render: bool = True) -> list[dict[str, Any]]:
    """Write a split's images (when `render`) and its caption (and VQA) files; returns the entries."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    make = functools.partial(_image_item, root, split, seed, config, render=render)
    n = config.split_size(split)
    items = pool.map(make, range(n), chunksize=max(1, min(256, n // 8))) if pool is not None else map(make, range(n))
    entries, questions, annotations = [], [], []
    for rel, digest, entry, qs, ans in tqdm(items, total=n, desc=f"world {split}", disable=not progress, leave=False):
        faults.checkpoint("world-file")  # here, in the process that runs the suite, not in a render worker
        if digest is not None:
            files[rel] = digest
        entries.append(entry)
        questions += qs
        annotations += ans
    if split in VQA_SPLITS and not render:
        raise ValueError(f"split {split!r} carries VQA files and cannot be deferred")
    _write(root, f"captions_{split}.json", dumps_json(entries).encode(), files)
    if split in VQA_SPLITS:
        info = {"description": f"quickstart world VQA, split {split}", "data_subtype": split}
        _write(root, f"vqa/questions_{split}.json", dumps_json({"info": info, "questions": questions}).encode(), files)
        _write(root, f"vqa/annotations_{split}.json",
               dumps_json({"info": info, "annotations": annotations}).encode(), files)
    return entries


DEFERRED_MARKER = "deferred.json"  # in images/<split>/: the split's images are rendered on first use
SPLIT_MANIFEST = "manifest.json"  # in images/<split>/: checksums of a deferred split's rendered images


def render_deferred(world_dir: str | Path, split: str, progress: bool = False, workers: int | None = None) -> bool:
    """Render a deferred split's images now (once, under a file lock); False when there was nothing to do.

    The images get the bytes eager generation would have written; their checksums go to
    images/<split>/manifest.json, written before the marker is removed, so a killed render is redone.
    """
    from filelock import FileLock

    world = Path(world_dir)
    folder = world / "images" / split
    marker = folder / DEFERRED_MARKER
    if not marker.is_file():
        return False
    with FileLock(str(world / f".render-{split}.lock")):
        if not marker.is_file():
            return False
        info = read_json(marker, "deferred split marker")
        config = WorldConfig.from_dict(info["config"])
        t0 = time.perf_counter()
        log.info("rendering the %d deferred images of split %s of %s (first use)", config.split_size(split),
                 split, world)
        files: dict[str, str] = {}
        make = functools.partial(_image_item, world, split, int(info["seed"]), config)
        n = config.split_size(split)
        with _pool(workers or cpu_cores()) as pool:
            items = pool.map(make, range(n), chunksize=max(1, min(256, n // 8))) if pool else map(make, range(n))
            for rel, digest, *_ in tqdm(items, total=n, desc=f"render {split}", disable=not progress, leave=False):
                faults.checkpoint("world-file")
                files[rel] = digest
        atomic_write_json(folder / SPLIT_MANIFEST, {"split": split, "files": dict(sorted(files.items()))})
        marker.unlink()
        log.info("rendered split %s in %.1f s", split, time.perf_counter() - t0)
    return True


def _corpus_item(seed: int, config: WorldConfig, i: int) -> list[str]:
    rng = item_rng(seed, "corpus", i)
    return scene_captions(sample_scene(rng, config), rng, config.captions_per_image)[0]


def _corpus(root: Path, seed: int, config: WorldConfig, files: dict[str, str], progress: bool,
            pool: Any = None) -> int:
    make = functools.partial(_corpus_item, seed, config)
    n = config.n_corpus
    items = pool.map(make, range(n), chunksize=max(1, min(256, n // 8))) if pool is not None else map(make, range(n))
    texts = [t for caps in tqdm(items, total=n, desc="world corpus", disable=not progress, leave=False) for t in caps]
    _write(root, "corpus_train.json", dumps_json(texts).encode(), files)
    return len(texts)


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Any]:
    """A process pool for rendering (None for one worker): fork where there is one, it starts in ms."""
    if workers <= 1:
        yield None
        return
    import concurrent.futures as cf
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        yield pool


def manifest_matches(manifest: Any, seed: int, config: WorldConfig) -> bool:
    return (isinstance(manifest, dict) and manifest.get("name") == WORLD_NAME
            and manifest.get("version") == WORLD_VERSION and manifest.get("seed") == seed
            and manifest.get("config") == config.to_dict() and isinstance(manifest.get("files"), dict))


def generate_world(out_dir: str | Path, seed: int = 0, config: WorldConfig | None = None,
                   progress: bool = True, workers: int | None = None, defer: Sequence[str] = DEFERRED_SPLITS) -> Path:
    """Generate the world into out_dir (replacing what is there); return the manifest path.

    Images are rendered by `workers` processes (default: one per CPU core); the bytes do not depend on it.
    The images of the `defer` splits are rendered on first use (`render_deferred`, called by
    maccap.data.load_split): the clip split's 20,000 images serve only to train CLIP, and the shipped
    weights make that training unnecessary for the default world.
    """
    config = config or WorldConfig()
    check_seed(seed, "world seed")
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot write the world to {out}: {e.strerror or e}") from None
    t0 = time.perf_counter()
    files: dict[str, str] = {}
    with _pool(workers or cpu_cores()) as pool:
        sizes = {split: len(_image_split(tmp, split, seed, config, files, progress, pool, split not in defer))
                 for split in ("clip", "val", "test")}
        sizes["corpus_captions"] = _corpus(tmp, seed, config, files, progress, pool)
    for split in defer:
        atomic_write_json(tmp / "images" / split / DEFERRED_MARKER, {"seed": seed, "config": config.to_dict()})
    manifest = {"name": WORLD_NAME, "version": WORLD_VERSION, "seed": seed, "config": config.to_dict(),
                "sizes": sizes, "deferred_images": sorted(defer), "files": dict(sorted(files.items())),
                "hash": sha256_bytes(dumps_json(dict(sorted(files.items()))).encode())}
    atomic_write_json(tmp / "manifest.json", manifest)
    faults.checkpoint("world-publish")
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    log.info("world written to %s in %.1f s: %s", out, time.perf_counter() - t0, sizes)
    return out / "manifest.json"


def _drop_leftovers(out: Path) -> None:
    """A complete world makes the `.old` copy a kill may leave behind (between the renames) garbage."""
    old = out.with_name(out.name + ".old")
    if old.is_dir():
        log.info("removing %s left by an interrupted world generation", old)
        shutil.rmtree(old, ignore_errors=True)


def ensure_world(out_dir: str | Path, seed: int = 0, config: WorldConfig | None = None, progress: bool = True,
                 verify: bool = False) -> Path:
    """Reuse a complete world with the same seed, config and version; generate it otherwise."""
    config = config or WorldConfig()
    path = Path(out_dir) / "manifest.json"
    if path.exists():
        try:
            manifest = read_json(path, "world manifest")
        except UserError:
            manifest = None
        if manifest_matches(manifest, seed, config):
            _drop_leftovers(Path(out_dir))
            if not verify:
                return path
            from maccap.data import verify_manifest

            problems = verify_manifest(out_dir)
            if not problems:
                return path
            log.warning("world at %s failed verification (%s); regenerating", out_dir, problems[0])
    return generate_world(out_dir, seed, config, progress)
