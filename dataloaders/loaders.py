"""Building datasets, content splits and reproducible (optionally distributed) DataLoaders."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.errors import UserError
from dataloaders.base import IQADataset
from dataloaders.datasets import DATASETS
from dataloaders.ref_cache import ReferenceCache

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)

DEFAULT_DIRS: dict[str, str] = {
    "kadid10k": "kadid10k",
    "live": "LIVE",
    "csiq": "CSIQ",
    "tid2013": "TID2013",
    "koniq-10k": "koniq-10k",
    "livec": "LIVEC",
    "bid": "BID",
    "pipal": "PIPAL",
    "ref_train": "DIV2K_ref/train_HR",
    "ref_test": "DIV2K_ref/val_HR",
}


def dataset_class(name: str) -> type[IQADataset]:
    """The reader class of dataset `name`; UserError listing the valid names if unknown."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASET_NAMES)}") from None


def build_dataset(name: str, root: str | os.PathLike, mode: str, *, patch_size: int = 224,
                  patch_num: int = 10, train: bool = False, content_ids: Sequence[int] | None = None,
                  ref_paths: Sequence[str | os.PathLike] | None = None, seed: int = 0, repeats: int = 1,
                  upscale: bool = False, augment_eval: bool = False,
                  ref_cache: ReferenceCache | None = None) -> IQADataset:
    """Dataset `name` read from `root` in `mode` ('lq' | 'lq_hq' | 'lq_hq_ref'); see IQADataset.

    With `ref_cache`, its reference images are decoded into that cache now and read from it (same samples).
    """
    dataset = dataset_class(name)(root, mode, patch_size=patch_size, patch_num=patch_num, train=train,
                                  content_ids=content_ids, ref_paths=ref_paths, seed=seed, repeats=repeats,
                                  upscale=upscale, augment_eval=augment_eval)
    if ref_cache is not None:
        dataset.use_cache(ref_cache)
    return dataset


def split_contents(num_contents: int, train_ratio: float = 0.8, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded shuffle of range(num_contents); the first round(train_ratio * n) go to train. Both sorted."""
    if num_contents < 1:
        raise UserError(f"cannot split {num_contents} contents")
    if not 0.0 <= train_ratio <= 1.0:
        raise UserError(f"train ratio must be in [0, 1] (got {train_ratio})")
    order = list(range(num_contents))
    random.Random(seed).shuffle(order)
    cut = round(train_ratio * num_contents)
    return sorted(order[:cut]), sorted(order[cut:])


class EpochSampler(DistributedSampler):
    """DistributedSampler that yields (index, epoch) pairs, so each item's random crops depend on the epoch.

    The order is shuffled with seed + epoch (when `shuffle`); outside torchrun it runs as replica 0 of 1.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((int(i), epoch) for i in super().__iter__())


class ShardedBatchSampler:
    """The batches one process of `world_size` evaluates: the batches of size `batch_size` a single process would
    form over the whole dataset, in order, every `world_size`-th of them from number `rank` on.

    Nothing is padded or repeated, and each batch is the one a single process forms, so the gathered predictions
    are those of a single process. Yields lists of (index, epoch) pairs, like `EpochSampler`.
    """

    def __init__(self, length: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.length, self.batch_size, self.rank, self.world_size = length, batch_size, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _starts(self) -> range:
        return range(self.rank * self.batch_size, self.length, self.world_size * self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for start in self._starts():
            yield [(i, epoch) for i in range(start, min(start + self.batch_size, self.length))]

    def __len__(self) -> int:
        return len(self._starts())


def _seed_worker(worker_id: int) -> None:
    """Seed numpy/random in a worker from torch's per-worker seed (sampling itself does not use them)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                 drop_last: bool = False, distributed: bool | None = None, pin_memory: bool = False,
                 shard: tuple[int, int] | None = None) -> DataLoader:
    """A DataLoader whose batches depend only on (seed, epoch): call set_loader_epoch() before each epoch.

    `distributed=None` detects torchrun (an initialised process group) and shards with DistributedSampler.
    Workers persist between epochs. `pin_memory`: page-locked batches, for a CUDA run only (the caller makes
    its device the current one first). Note that a distributed sampler pads the shards to equal length by
    repeating items (also with shuffle=False). `shard` = (rank, world size): for evaluation, this process's
    share of the unshuffled batches (`ShardedBatchSampler`), without padding.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1 (got {batch_size})")
    if num_workers < 0:
        raise UserError(f"num_workers must be >= 0 (got {num_workers})")
    common = {"num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": num_workers > 0,
              "worker_init_fn": _seed_worker, "generator": torch.Generator().manual_seed(seed)}
    if shard is not None:
        if shuffle or drop_last:
            raise ValueError("a sharded loader (evaluation) neither shuffles nor drops batches")
        return DataLoader(dataset, batch_sampler=ShardedBatchSampler(len(dataset), batch_size, *shard), **common)
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        replicas, rank = dist.get_world_size(), dist.get_rank()
    else:
        replicas, rank = 1, 0
    sampler = EpochSampler(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of a loader made by build_loader (shuffle order and random crops follow it)."""
    batches = getattr(loader, "batch_sampler", None)
    sampler = batches if hasattr(batches, "set_epoch") else loader.sampler
    if not hasattr(sampler, "set_epoch"):
        raise TypeError("set_loader_epoch needs a loader made by build_loader")
    sampler.set_epoch(epoch)
