"""Reference cache: decoded reference images kept in memory once and shared by every loader worker.

Some images are read by many samples: the non-aligned reference pool (each student sample draws one of DIV2K's
800 2K images, 8.3 MB decoded, ~40 ms to decode) and the pixel-aligned references of synthetic datasets
(KADID-10k: 81 for 10,125 images). A `ReferenceCache` decodes them once, before any loader worker starts,
into one block of memory per dataset. With loader workers that block is shared memory: every worker maps
the same pages whatever the start method (fork, spawn or forkserver: torch hands the block to a spawned
worker as a file descriptor, never as a copy), so the cache costs its size once, not once per worker.

The cache holds exactly what the dataset's own decoding gives (same bytes), so samples are bit for bit the
same with the cache on or off. It never holds more than its budget: images beyond it are decoded per sample,
as without a cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from common.errors import UserError
from common.log import get_logger

GB = 2**30
DEFAULT_CAP_GB = 16.0  # DIV2K's train + val pools decoded are 7.5 GB


class CacheEntry(NamedTuple):
    """One image a dataset wants cached: its key, its decoded shape (H, W, 3) and how to decode it."""

    key: Hashable
    shape: tuple[int, int, int]
    load: Callable[[], np.ndarray]


def available_memory_bytes() -> int | None:
    """Memory the system can still give (MemAvailable on Linux), or None when it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def shared_memory_free_bytes() -> int | None:
    """Free space of /dev/shm (where shared tensors live on Linux), or None where there is no such folder."""
    try:
        stat = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize


def _env_local_processes() -> int:
    """How many processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_budget_gb(processes: int | None = None) -> float:
    """min(16 GB, a quarter of the available memory), split among the `processes` sharing this machine (default:
    those torchrun started on it)."""
    available = available_memory_bytes()
    budget = min(DEFAULT_CAP_GB, available / 4 / GB) if available else 2.0
    return budget / (_env_local_processes() if processes is None else max(1, processes))


def _shared_block(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of `nbytes` allocated directly in shared memory (share_memory_() would first zero a copy)."""
    try:
        return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
    except (AttributeError, TypeError, RuntimeError):  # a torch without that helper
        return torch.empty(nbytes, dtype=torch.uint8).share_memory_()


class ReferenceCache:
    """Decoded images (uint8 H x W x 3) in one memory block per `add`, at most `budget_gb` in all.

    `shared`: put the blocks in shared memory (needed when loader workers read them); its budget is then also
    capped at half the free space of /dev/shm divided among the `processes` of this machine (each caches its
    own copy), leaving the rest to the loader's own batches. `threads`: images decoded in parallel while filling.
    A block that no longer fits in /dev/shm when it is allocated stops the run with one line (`UserError`),
    instead of a bus error when its pages are written.
    """

    def __init__(self, budget_gb: float, *, shared: bool = False, threads: int = 1, processes: int = 1) -> None:
        if budget_gb < 0:
            raise ValueError(f"budget must be >= 0 GB (got {budget_gb})")
        self.requested_bytes = int(budget_gb * GB)
        self.budget_bytes = self.requested_bytes
        self.shared, self.threads = shared, max(1, threads)
        self.limited_by_shm = False
        if shared:
            free = shared_memory_free_bytes()
            cap = free // 2 // max(1, processes) if free is not None else None
            if cap is not None and cap < self.budget_bytes:
                self.budget_bytes, self.limited_by_shm = cap, True
        self.used_bytes = 0
        self._blocks: list[torch.Tensor] = []
        self._index: dict[Hashable, tuple[int, int, tuple[int, int, int]]] = {}
        self._views: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._index

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_views"] = None  # numpy views are rebuilt in each process from the (shared) blocks
        return state

    def get(self, key: Hashable) -> np.ndarray | None:
        """The cached image of `key` (a read-only view, no copy), or None when it is not cached."""
        found = self._index.get(key)
        if found is None:
            return None
        if self._views is None or len(self._views) != len(self._blocks):
            self._views = [block.numpy() for block in self._blocks]
        block, offset, shape = found
        view = self._views[block][offset:offset + shape[0] * shape[1] * shape[2]].reshape(shape)
        view.flags.writeable = False
        return view

    def add(self, entries: Iterable[CacheEntry], label: str = "images") -> int:
        """Decode and keep the entries that fit the budget, in the order given (those already held are skipped).

        Entries that do not fit are left out (read per sample by their dataset). Returns the number added.
        """
        planned, left_out, size = [], 0, 0
        seen: set = set()
        for entry in entries:
            if entry.key in self._index or entry.key in seen:
                continue
            seen.add(entry.key)
            nbytes = int(np.prod(entry.shape))
            if self.used_bytes + size + nbytes > self.budget_bytes:
                left_out += 1
                continue
            planned.append((entry, size))
            size += nbytes
        added = 0
        if planned:
            if self.shared:
                _check_shared_memory(size, label)
            block = _shared_block(size) if self.shared else torch.empty(size, dtype=torch.uint8)
            flat = block.numpy()

            def fill(item: tuple[CacheEntry, int]) -> bool:
                entry, offset = item
                try:
                    image = entry.load()
                except UserError:
                    return False  # unreadable: left to per-sample decoding, which reports it
                if image.shape != entry.shape or image.dtype != np.uint8:
                    return False  # not what the header promised: left to per-sample decoding
                flat[offset:offset + image.size] = image.reshape(-1)
                return True

            with ThreadPoolExecutor(self.threads) as pool:  # PIL decodes without holding the GIL
                filled = list(pool.map(fill, planned))
            self._blocks.append(block)
            self.used_bytes += size
            for (entry, offset), ok in zip(planned, filled):
                if ok:
                    self._index[entry.key] = (len(self._blocks) - 1, offset, entry.shape)
                    added += 1
            left_out += len(planned) - added
        if planned or left_out:
            beyond = f"; {left_out} beyond the budget, decoded per sample" if left_out else ""
            get_logger().info(
                f"reference cache: {label}: {added} images cached ({size / GB:.2f} GB){beyond}; "
                f"{self.used_bytes / GB:.2f} of {self.budget_bytes / GB:.2f} GB used")
        return added

    def describe(self) -> str:
        """One line for the log: the budget, where it comes from and the kind of memory."""
        where = "shared memory, one copy for all loader workers" if self.shared else "process memory"
        note = (f" (capped from {self.requested_bytes / GB:.2f} GB at this process's share of half the free space "
                "of /dev/shm; "
                "give the machine or container more shared memory to cache more)") if self.limited_by_shm else ""
        return f"reference cache: up to {self.budget_bytes / GB:.2f} GB in {where}{note}"


def _check_shared_memory(nbytes: int, label: str) -> None:
    """UserError when /dev/shm has less than `nbytes` free (tmpfs pages are only claimed when written: a block
    that does not fit would end the process with a bus error while it is filled)."""
    free = shared_memory_free_bytes()
    if free is not None and nbytes > free:
        raise UserError(f"reference cache: {label} needs {nbytes / GB:.2f} GB of shared memory but /dev/shm has "
                        f"{free / GB:.2f} GB free: lower --ref_cache_gb (0 = off) or give the machine or container "
                        "more shared memory (docker --shm-size)")


def build_reference_cache(budget_gb: float | None, num_workers: int,
                          local_processes: int = 1) -> ReferenceCache | None:
    """The cache a run asks for: `budget_gb` None = default_budget_gb(), 0 = no cache (None). The budget is for
    the whole machine: each of its `local_processes` (torchrun's processes on it) gets an equal share."""
    processes = max(1, local_processes)
    budget_gb = default_budget_gb(processes) if budget_gb is None else budget_gb / processes
    if budget_gb <= 0:
        return None
    return ReferenceCache(budget_gb, shared=num_workers > 0, threads=min(8, os.cpu_count() or 1),
                          processes=processes)
