"""torch.distributed glue for `torchrun --nproc_per_node N -m scratchdet train ...`."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: this module binds `group.WORLD` as default
# arguments when first imported, and DDP's first construction imports it (through
# torch.distributed._shard). Imported after init_process_group, it keeps the default group alive past
# destroy_process_group, gloo's threads then meet interpreter finalization, and a rank can die with
# SIGABRT ("terminate called without an active exception") after the run finished.
if dist.is_available():
    import torch.distributed.nn.functional  # noqa: F401


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Initialise from torchrun's environment; NCCL on CUDA, gloo on CPU. Single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any (e.g. 'stop now')."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_int(value: int, info: DistInfo) -> int:
    """Rank 0's ``value`` on every rank (a choice made from a measurement, which differs per rank)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.broadcast(t, src=0)
    return int(t.item())


def cleanup(info: DistInfo, finished: bool = False) -> None:
    """Tear the process group down. `finished`: every rank got to the end, so they first meet at a
    barrier and leave together (otherwise a rank destroys its group while rank 0 still writes the
    final model); after an error there is no barrier, since the other ranks may never reach it."""
    if not (info.enabled and dist.is_initialized()):
        return
    if finished:
        barrier(info)
    dist.destroy_process_group()
