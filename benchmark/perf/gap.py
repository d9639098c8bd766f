"""Speed of the gap analysis: moment accumulation throughput, peak memory for 1M pairs, full analysis time."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np

from analysis import gap as G
from analysis.moments import StreamingMoments


def _unit_pairs(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    t = (v + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)


def throughput(dim: int, n_pairs: int, batch: int = 4096) -> dict[str, float]:
    """Pairs/s of the full accumulator (d moments with covariance and M3/M4, centroids, halves, reservoir)."""
    v, t = _unit_pairs(batch, dim, 0)
    acc = G.GapAccumulator(dim, reservoir_size=5000, seed=0)
    moments_only = StreamingMoments(dim)
    t0 = time.perf_counter()
    for _ in range(n_pairs // batch):
        acc.update(v, t)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_pairs // batch):
        moments_only.update(v - t)
    mom = time.perf_counter() - t0
    n = (n_pairs // batch) * batch
    return {"pairs": n, "accumulator_pairs_per_s": n / full, "moments_only_pairs_per_s": n / mom}


def peak_memory_1m(dim: int = 768, batch: int = 4096, n_pairs: int = 1_000_000) -> dict[str, float]:
    """Peak Python-heap allocation (tracemalloc) while streaming n_pairs pairs through the accumulator."""
    v, t = _unit_pairs(batch, dim, 1)
    tracemalloc.start()
    acc = G.GapAccumulator(dim, reservoir_size=5000, seed=0)
    t0 = time.perf_counter()
    for _ in range(n_pairs // batch + 1):
        acc.update(v, t)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    raw = n_pairs * dim * 2 * 4 / 2**20
    return {"pairs": acc.d.n, "dim": dim, "peak_mib": peak / 2**20, "raw_float32_pairs_mib": raw, "seconds": elapsed}


def full_analysis(n_images: int = 1000, captions: int = 5, dim: int = 128) -> dict[str, float]:
    """Time of the report (tests, control, projections, Mardia) on a quickstart-sized split (synthetic features)."""
    rng = np.random.default_rng(2)
    img = rng.standard_normal((n_images, dim))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.repeat(np.arange(n_images), captions)
    txt = img[owner] + 0.3 * rng.standard_normal((len(owner), dim))
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    t0 = time.perf_counter()
    G.analyze_gap(G.paired_batches(img, txt, owner), dim, G.GapConfig())
    return {"pairs": len(owner), "dim": dim, "seconds": time.perf_counter() - t0}


def run(quick: bool = False) -> dict[str, Any]:
    n = 50_000 if quick else 400_000
    out: dict[str, Any] = {f"throughput_d{d}": throughput(d, n) for d in (512, 768)}
    out["peak_memory_1m_d768"] = peak_memory_1m(n_pairs=100_000 if quick else 1_000_000)
    out["full_analysis_quickstart_test"] = _quickstart_or_synthetic(quick)
    return out


def _quickstart_or_synthetic(quick: bool) -> dict[str, Any]:
    """The real quickstart test split when the world and a trained backbone exist, else synthetic features."""
    try:
        return _quickstart(quick)
    except Exception as e:  # noqa: BLE001 - a benchmark falls back rather than failing
        res = full_analysis(n_images=200 if quick else 1000)
        res["source"] = f"synthetic (quickstart unavailable: {type(e).__name__}: {e})"[:300]
        return res


def _quickstart(quick: bool) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    from benchmark.single import run_single
    from maccap.backbones import BACKBONES

    if not BACKBONES.get("qs-rn").shipped_weights.is_file():
        raise FileNotFoundError("qs-rn has no trained weights yet")  # fail before generating the world
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_single("gap", "none", "qs-rn", "quickstart", {"figures": not quick}, Path(tmp) / "results",
                   work_dir="work", progress=False)
        return {"seconds_including_features": time.perf_counter() - t0, "source": "quickstart test split, qs-rn"}


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
