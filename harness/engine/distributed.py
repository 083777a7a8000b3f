"""Multi-process training under torchrun: `torchrun --nproc_per_node=N -m harness experiment <spec>`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init()` joins the process group (NCCL on CUDA,
gloo on CPU) and says which device this rank drives. The loop stays the same: the model is
wrapped in DistributedDataParallel, the training split is sharded by DistributedSampler (the
spec's batch_size is per process), evaluation splits are sharded r::world and the per-image
results gathered back into the original order, so every rank computes identical metrics.
Only rank 0 talks to MLflow and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ONE = World()  # a single process: the default wherever a world is asked for


def init(device_name: str = "auto") -> World:
    """Join the process group if launched by torchrun with WORLD_SIZE > 1; else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process)."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def interleave(part: torch.Tensor) -> torch.Tensor:
    """Rows this rank holds for indices rank::world -> every row, in the original order."""
    if not active():
        return part
    size = dist.get_world_size()
    parts: list = [None] * size
    dist.all_gather_object(parts, part.cpu())
    out = torch.empty((sum(len(p) for p in parts), *part.shape[1:]), dtype=part.dtype)
    for rank, p in enumerate(parts):
        out[rank::size] = p
    return out


def broadcast(value):
    """Rank 0's value on every rank (a picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
