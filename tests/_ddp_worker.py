"""Worker for tests/test_distributed.py: one tiny training, run by the test itself or under torchrun.

`python -m torch.distributed.run --nproc_per_node 2 tests/_ddp_worker.py OUT` trains the same tiny
captioner as `train(...)` in one process, once straight through and once stopped after the first
epoch and resumed, and writes rank 0's weights plus each rank's checkpoint-write count under OUT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

CAPS = [f"a {c} {s}." for c in ("red", "blue", "green", "big red", "small blue") for s in ("circle", "square", "star", "moon", "triangle")]
# 25 captions at batch 8: batches of 8, 8, 8 and 1; with two ranks the last one leaves rank 1 without rows


def train(ckpt_dir: Path | None, dist=None, stop: int | None = None, epochs: int = 2):
    from maccap.aligner import AlignerConfig
    from maccap.lm import load_lm
    from maccap.methods import get_method
    from maccap.noise import NoiseModel
    from maccap.train import TrainConfig, fit, new_captioner

    torch.set_num_threads(1)
    model, tok = load_lm("tiny-gpt2", corpus=CAPS)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=3e-3, warmup_iters=2,
                      aligner=AlignerConfig(n_queries=3, n_heads=2, ffn_dim=16, dropout=0.0))
    cap = new_captioner(get_method("maccap"), model, tok, 8, cfg, train_seed=7)
    feats = torch.nn.functional.normalize(torch.randn(len(CAPS), 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    info = fit(cap, feats, CAPS, cfg, 7, NoiseModel.isotropic(0.016), ckpt_dir=ckpt_dir, stop_after_epoch=stop,
               dist=dist)
    return cap.bridge.state_dict(), info


def main(out: Path) -> None:
    import maccap.train as train_mod
    from maccap import distributed

    dist = distributed.init_from_env("cpu")
    assert dist is not None and dist.world_size == 2, "run under torchrun with 2 processes"
    writes = []
    real_save = train_mod.save_checkpoint
    train_mod.save_checkpoint = lambda *a, **k: (writes.append(a[1]), real_save(*a, **k))
    full, info = train(out / "ckpt-full", dist)
    train(out / "ckpt-resume", dist, stop=0)
    resumed, _ = train(out / "ckpt-resume", dist)
    (out / f"rank{dist.rank}.json").write_text(json.dumps({"checkpoint_writes": writes, "history": info["history"]}))
    if dist.is_main:
        save_file({k: v.contiguous() for k, v in full.items()}, str(out / "full.safetensors"))
        save_file({k: v.contiguous() for k, v in resumed.items()}, str(out / "resumed.safetensors"))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
