"""One seed function for every source of randomness."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


SEED_LIMIT = 2**32


def check_seed(seed: object, what: str = "seed") -> int:
    """The seed as an int in [0, 2**32) (what numpy and torch accept everywhere), else a UserError."""
    from maccap.errors import UserError

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"{what} {seed!r} is not an integer; expected an integer in [0, 2**32)")
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{what} {seed} is out of range; expected an integer in [0, 2**32)")
    return seed


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a torch Generator seeded the same way.

    Training and evaluation take separate seeds, each passed through here, so test-time noise never
    depends on how many random numbers training happened to draw.
    """
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker seeding derived from torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
