"""Datasets and loaders over in-memory uint8 splits; workers only augment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler


class SegDataset(Dataset):
    """Index, or (index, epoch seed) from SeededSampler -> (image uint8 (3, H, W), mask uint8
    (1, H, W), index). Augments if a pipeline is given, seeded per sample when an epoch seed comes."""

    def __init__(self, split, pipeline=None):
        self.split, self.pipeline = split, pipeline

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: int | tuple[int, int]):
        i, epoch_seed = item if isinstance(item, tuple) else (item, None)  # (index, seed) from SeededSampler
        image, mask = self.split.images[i], self.split.masks[i]
        if self.pipeline is not None:
            if epoch_seed is not None:
                self.pipeline.set_random_seed(int(np.random.SeedSequence([epoch_seed, i]).generate_state(1)[0]))
            out = self.pipeline(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask = torch.from_numpy(np.ascontiguousarray(mask))[None]
        return image, mask, i


class SeededSampler(Sampler):
    """Yields (index, epoch seed) for the wrapped sampler's indices, drawing one seed per epoch
    from `generator` (the one a checkpoint saves). SegDataset seeds each sample's augmentation
    from (epoch seed, index), so what augmentation an image gets depends on the run's seed, the
    epoch and the image only: not on num_workers, on which worker or rank loads it, or on
    whether the run was resumed (worker processes' own RNG cannot be checkpointed)."""

    def __init__(self, sampler, generator: torch.Generator):
        self.sampler, self.generator = sampler, generator

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch_seed = int(torch.randint(2**62, (), generator=self.generator))
        return ((i, epoch_seed) for i in self.sampler)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    np.random.seed(info.seed % 2**31)  # torch gives each worker base_seed + id, derived from the loader generator


@dataclass(frozen=True)
class LoaderSettings:
    """What a run's loaders share: batch size, worker processes, pinned memory, and this process's
    rank of `world` (world > 1: each rank loads its shard)."""

    batch_size: int
    num_workers: int = 0
    pin_memory: bool = False
    rank: int = 0
    world: int = 1


def make_loader(split, s: LoaderSettings, *, shuffle: bool = False, pipeline=None, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """With s.world > 1 this rank sees its shard: DistributedSampler when shuffling (call
    `loader.sampler.set_epoch(epoch)`), else indices rank::world (see distributed.interleave)."""
    dataset = SegDataset(split, pipeline)
    # The order has a generator of its own (see order_generator): the loader's draws worker
    # seeds whenever workers start, which a resumed run does once more than the original.
    order = torch.Generator().manual_seed(seed)
    if s.world > 1:
        sampler = (DistributedSampler(dataset, s.world, s.rank, shuffle=True, seed=seed, drop_last=drop_last)
                   if shuffle else list(range(s.rank, len(dataset), s.world)))
    else:
        sampler = RandomSampler(dataset, generator=order) if shuffle else SequentialSampler(dataset)
    if pipeline is not None:
        sampler = SeededSampler(sampler, order)
    return DataLoader(
        dataset, batch_size=s.batch_size, sampler=sampler, drop_last=drop_last,
        num_workers=s.num_workers, pin_memory=s.pin_memory, generator=torch.Generator().manual_seed(seed + 1),
        worker_init_fn=_seed_worker if s.num_workers else None,
        persistent_workers=s.num_workers > 0,
    )


def order_generator(loader: DataLoader) -> torch.Generator:
    """The generator that draws the loader's order each epoch: the one a checkpoint saves and
    a resume restores (DistributedSampler derives its order from seed + epoch instead)."""
    return getattr(loader.sampler, "generator", None) or loader.generator


def start_epoch(loader: DataLoader, epoch: int):
    """The loader's iterator for `epoch`: draws the epoch's order now and, with persistent
    workers, sets them preparing its first batches (prefetch_factor per worker) at once."""
    if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler: a new order per epoch
        loader.sampler.set_epoch(epoch)
    return iter(loader)
