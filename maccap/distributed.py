"""Data-parallel training under `torchrun`: the one module that knows about distribution.

`torchrun --nproc_per_node N ...` starts N processes with WORLD_SIZE/RANK/LOCAL_RANK set. Each rank
builds the same model from the same seeds and draws the same epoch permutation and training noise for
the *global* batch (so the batches are those of a single-process run with the same `batch_size`),
then keeps a contiguous slice of the rows. The loss is the global token mean: each rank backpropagates
`its token-loss sum * world / all tokens of the global batch`, and DistributedDataParallel averages
the gradients over ranks, which gives exactly the gradient of the single-process mean loss. Only rank
0 writes checkpoints and weights. With `world_size == 1` nothing here is used (`current()` is None).

What is not identical to one process: dropout masks (each rank draws its own), so an aligner with
dropout > 0 trains on a different, equally valid random draw.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from maccap.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: rank, world size, local rank (its GPU) and the backend."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | torch.device) -> torch.device:
        """The rank's device: `cuda` becomes cuda:LOCAL_RANK; anything else is kept."""
        dev = torch.device(requested)
        if dev.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return dev

    def rows(self, n: int) -> tuple[slice, bool]:
        """This rank's contiguous slice of a global batch of n rows, and whether it holds real rows.

        A rank left without rows (n < world size, e.g. a short last batch) computes the first row
        with zero weight, so that every rank runs the same forward/backward and the all-reduces match.
        """
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        hi = lo + base + (self.rank < extra)
        if hi > lo:
            return slice(lo, hi), True
        return slice(0, 1), False

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around the trainable module (gradients all-reduced, averaged)."""
        from torch.nn.parallel import DistributedDataParallel

        params = next((p for p in module.parameters() if p.requires_grad), None)
        on_cuda = params is not None and params.device.type == "cuda"
        return DistributedDataParallel(module, device_ids=[params.device.index] if on_cuda else None)

    def global_loss(self, local_sum: torch.Tensor, local_count: torch.Tensor,
                    real: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate on this rank, the global mean loss as a detached scalar).

        local_sum: summed token losses of this rank's rows; local_count: their number of tokens.
        One all-reduce carries both sums; DDP then averages gradients over ranks, so backpropagating
        local_sum * world / total_count yields the gradient of total_sum / total_count.
        """
        w = 1.0 if real else 0.0
        stats = torch.stack([local_sum.detach().float() * w, local_count.float() * w])
        torch.distributed.all_reduce(stats)
        total_sum, total_count = stats[0], stats[1].clamp(min=1)
        return local_sum * (w * self.world_size / total_count), total_sum / total_count

    def barrier(self) -> None:
        if self.backend == "nccl":
            torch.distributed.barrier(device_ids=[self.local_rank])
        else:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of `obj` on every rank (a decision every rank must share)."""
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (building shared caches), the other ranks after it (reading them)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) outside torchrun."""
    def read(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise UserError(f"environment variable {name}={raw!r}: expected an integer (set by torchrun)") from None

    world = read("WORLD_SIZE", 1)
    rank, local = read("RANK", 0), read("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"environment: RANK={rank}, WORLD_SIZE={world}; expected 0 <= RANK < WORLD_SIZE")
    return rank, world, local


def init_from_env(device: str | torch.device) -> DistEnv | None:
    """Join the torchrun job when WORLD_SIZE > 1 (nccl for CUDA, gloo for CPU); None for one process."""
    rank, world, local = env_world()
    if world == 1:
        return None
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise UserError(f"--device {device}: rank {rank} needs GPU {local} but "
                            f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} are visible")
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    env = DistEnv(rank=rank, world_size=world, local_rank=local, backend=backend)
    if not env.is_main:  # one voice in the logs
        logging.getLogger("maccap").setLevel(logging.WARNING)
    log.info("distributed training: %d ranks, backend %s", world, backend)
    return env


def current() -> DistEnv | None:
    """The job this process has joined (after init_from_env), or None for single-process runs."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world = torch.distributed.get_world_size()
    if world == 1:
        return None
    _, _, local = env_world()
    return DistEnv(rank=torch.distributed.get_rank(), world_size=world, local_rank=local,
                   backend=str(torch.distributed.get_backend()))


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
