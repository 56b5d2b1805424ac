"""A seeded, resumable, distributed batch sampler.

The order of epoch e is a permutation seeded by (seed, e), so it never depends on
worker timing; `start_batch` skips what a resumed run already trained on.
Each rank takes every world_size-th batch-slot of the same global order, like
DistributedSampler, with drop_last so every rank runs the same number of steps.
With ``with_epoch`` every index comes as ``(epoch, index)``: the data set then seeds its
augmentation from the pair, so persistent DataLoader workers need no set_epoch.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler):
    def __init__(self, dataset_len: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, with_epoch: bool = False):
        if dataset_len < batch_size * world_size:
            raise ValueError(f"the data set has {dataset_len} images, fewer than one global batch "
                             f"({batch_size} x {world_size} ranks)")
        self.n, self.batch_size, self.seed, self.shuffle = dataset_len, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0
        self.with_epoch = with_epoch

    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):
            chunk = order[b * global_batch:(b + 1) * global_batch]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(self.epoch, i) for i in mine] if self.with_epoch else mine
