"""Datasets and loaders over in-memory uint8 splits; workers only augment."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

class SegDataset(Dataset):
    """Index -> (image uint8 (3, H, W), mask uint8 (1, H, W), index). Augments if a pipeline is given."""

    def __init__(self, split, pipeline=None):
        self.split, self.pipeline = split, pipeline

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        image, mask = self.split.images[i], self.split.masks[i]
        if self.pipeline is not None:
            out = self.pipeline(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask = torch.from_numpy(np.ascontiguousarray(mask))[None]
        return image, mask, i


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**31  # torch gives each worker base_seed + id, derived from the loader generator
    np.random.seed(seed)
    pipeline = getattr(info.dataset, "pipeline", None)
    if pipeline is not None:  # albumentations does not reseed per worker on its own
        pipeline.set_random_seed(seed)


def make_loader(split, *, batch_size: int, shuffle: bool, pipeline=None, num_workers: int = 0,
                seed: int = 0, pin_memory: bool = False, drop_last: bool = False, rank: int = 0,
                world: int = 1) -> DataLoader:
    """With world > 1 this rank sees its shard: DistributedSampler when shuffling (call
    `loader.sampler.set_epoch(epoch)`), else indices rank::world (see distributed.interleave)."""
    dataset = SegDataset(split, pipeline)
    sampler = None
    if world > 1:
        sampler = (DistributedSampler(dataset, world, rank, shuffle=True, seed=seed, drop_last=drop_last) if shuffle
                   else list(range(rank, len(dataset), world)))
    elif shuffle:
        # The order has a generator of its own (see order_generator): the loader's draws worker
        # seeds whenever workers start, which a resumed run does once more than the original.
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
        num_workers=num_workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed + 1),
        worker_init_fn=_seed_worker if num_workers else None,
        persistent_workers=num_workers > 0,
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
