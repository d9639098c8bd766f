"""Data-parallel training: 2 CPU ranks (gloo) under torchrun train the same weights as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maccap.distributed import DistEnv, env_world
from maccap.errors import UserError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script_args: list[str], nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", *script_args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("n,world", [(8, 2), (7, 2), (1, 2), (5, 3), (2, 4)])
def test_rows_partition_every_batch(n: int, world: int) -> None:
    parts = [DistEnv(r, world, r, "gloo").rows(n) for r in range(world)]
    real = [list(range(n))[s] for s, ok in parts if ok]
    assert sum(real, []) == list(range(n))  # contiguous, in order, nothing twice
    assert max(map(len, real)) - min(map(len, real)) <= 1
    for s, ok in parts:
        if not ok:
            assert s == slice(0, 1)  # a rank without rows computes one row with weight 0


def test_env_world_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_world() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_world() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UserError, match="RANK=4, WORLD_SIZE=4"):
        env_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="RANK='x'"):
        env_world()


def test_the_data_parallel_path_on_one_rank_matches_the_plain_loop(tmp_path: Path) -> None:
    """DDP wrapping, the token-sum loss and its all-reduce, in-process (a gloo group of one)."""
    import _ddp_worker

    plain, info = _ddp_worker.train(None)
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1),
                                         rank=0, world_size=1)
    try:
        ddp, ddp_info = _ddp_worker.train(tmp_path / "ckpt", DistEnv(0, 1, 0, "gloo"))
    finally:
        torch.distributed.destroy_process_group()
    for k, v in plain.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert [h["loss"] for h in ddp_info["history"]] == pytest.approx([h["loss"] for h in info["history"]], rel=1e-6)
    assert (tmp_path / "ckpt" / "epoch001" / "bridge.safetensors").is_file()


@pytest.mark.slow
def test_two_gloo_ranks_train_the_weights_of_one_process(tmp_path: Path) -> None:
    import _ddp_worker

    single, info = _ddp_worker.train(None)
    proc = _torchrun([str(HERE / "_ddp_worker.py"), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = load_file(str(tmp_path / "full.safetensors"))
    resumed = load_file(str(tmp_path / "resumed.safetensors"))
    assert set(full) == set(single)
    init, _ = _ddp_worker.train(None, epochs=0)
    moved = max(float((single[k] - init[k]).abs().max()) for k in single)
    diff = max(float((single[k] - full[k]).abs().max()) for k in single)
    print(f"DDP vs one process: max abs weight difference {diff:.3g} (training moved weights by up to {moved:.3g})")
    assert moved > 1e-2 and diff < 1e-5, (moved, diff)  # training moved the weights; both runs moved them alike
    for k, v in single.items():
        torch.testing.assert_close(full[k], v, rtol=1e-4, atol=1e-5, msg=k)
        torch.testing.assert_close(resumed[k], v, rtol=1e-4, atol=1e-5, msg=k)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["checkpoint_writes"] == [0, 1, 0, 1]  # full run, stopped run, resumed run
    assert ranks[1]["checkpoint_writes"] == []  # only rank 0 writes
    for r in ranks:  # every rank logs the loss of the whole global batch, as one process does
        assert [h["loss"] for h in r["history"]] == pytest.approx([h["loss"] for h in info["history"]], rel=1e-5)


@pytest.mark.slow
def test_cli_train_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m benchmark.cli train ...` trains the captioner one process trains."""
    import yaml
    from test_train import _mini_world

    data = _mini_world(tmp_path / "data")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "warmup_iters": 2,
                                             "max_captions": 22, "val_images": 1,
                                             "aligner": {"n_queries": 3, "n_heads": 2, "ffn_dim": 16, "dropout": 0.0}}}))
    args = ["train", "--dataset", str(data), "--lm", "tiny-gpt2", "--config", str(cfg), "--no-progress"]
    ddp = _torchrun(["-m", "benchmark.cli", *args, "--work-dir", str(tmp_path / "w2")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("captioner:") == 1 and "trained on 2 ranks" in ddp.stdout  # rank 0 speaks
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, "-m", "benchmark.cli", *args, "--work-dir", str(tmp_path / "w1")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    d2 = Path(ddp.stdout.split("captioner: ")[1].split()[0])
    d1 = Path(one.stdout.split("captioner: ")[1].split()[0])
    assert d1.name == d2.name  # same cache key: world size does not change what is trained
    w1, w2 = load_file(str(d1 / "bridge.safetensors")), load_file(str(d2 / "bridge.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    meta = json.loads((d2 / "meta.json").read_text())
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo"}
    # a rerun under torchrun finds the finished captioner and trains nothing
    again = _torchrun(["-m", "benchmark.cli", *args, "--work-dir", str(tmp_path / "w2")])
    assert again.returncode == 0 and "epoch 2" in again.stdout, again.stderr[-2000:]
