"""Every collective of a torchrun run, on tensors on the run's device.

A process group made with `backend="nccl"` serves CUDA tensors only: a collective on a CPU tensor stops the run
("No backend type associated with device type cpu"). The helpers here therefore move what they reduce or gather to
`DistInfo.device` (the run's device: `cuda:LOCAL_RANK` under NCCL, the CPU under gloo) and bring the result back to
the host. Outside torchrun (`DistInfo.distributed` false) they do no communication. Nothing else in the code calls
`torch.distributed` collectives (tests/test_collectives.py checks it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from tools.utils import DistInfo


def _to_device(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    return values.to(info.device)


def _to_host(values: torch.Tensor) -> torch.Tensor:
    return values.cpu()


def sum_across(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise sum of `values` over the ranks (a CPU tensor of the same dtype)."""
    if not info.distributed:
        return values.clone()
    on_device = _to_device(values, info)
    dist.all_reduce(on_device)
    return _to_host(on_device)


def mean_across(values: list[float], info: DistInfo) -> float:
    """The mean of every rank's `values` together (NaN when there are none anywhere)."""
    total = sum_across(torch.tensor([sum(values), len(values)], dtype=torch.float64), info)
    return float(total[0] / total[1]) if total[1] else float("nan")


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether `flag` is true on at least one rank (every rank gets the same answer)."""
    return bool(sum_across(torch.tensor([int(bool(flag))], dtype=torch.int64), info)[0] > 0)


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (a collective on the run's device, like the others)."""
    sum_across(torch.zeros(1, dtype=torch.int64), info)


def gather_1d(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's 1-D `values` (lengths may differ) concatenated in rank order, on every rank (CPU tensor)."""
    values = values.reshape(-1)
    if not info.distributed:
        return values.clone()
    lengths = gather_lengths(len(values), info)
    lengths[info.rank] = len(values)  # its own length never depends on the transport (a fake group sends zeros)
    longest = max(lengths)
    padded = torch.zeros(longest, dtype=values.dtype)
    padded[:len(values)] = values
    parts = [torch.empty(longest, dtype=values.dtype, device=info.device) for _ in range(info.world_size)]
    dist.all_gather(parts, _to_device(padded, info))
    return torch.cat([_to_host(part)[:n] for part, n in zip(parts, lengths)])


def gather_lengths(length: int, info: DistInfo) -> list[int]:
    """Every rank's `length`, in rank order."""
    if not info.distributed:
        return [length]
    parts = [torch.zeros(1, dtype=torch.int64, device=info.device) for _ in range(info.world_size)]
    dist.all_gather(parts, _to_device(torch.tensor([length], dtype=torch.int64), info))
    return [int(_to_host(part)[0]) for part in parts]


def gather_array(values: np.ndarray, info: DistInfo) -> np.ndarray:
    """`gather_1d` for a 1-D numpy array (its dtype kept)."""
    return gather_1d(torch.from_numpy(np.ascontiguousarray(values)), info).numpy()


def broadcast_text(text: str | None, info: DistInfo, src: int = 0) -> str | None:
    """Rank `src`'s `text` (or None) on every rank, sent as bytes in a tensor on the run's device."""
    if not info.distributed:
        return text
    data = b"" if text is None else b"\x01" + text.encode("utf-8")
    size = int(sum_across(torch.tensor([len(data) if info.rank == src else 0], dtype=torch.int64), info)[0])
    size = len(data) if info.rank == src else size  # `src` keeps its own size whatever the transport returns
    if size == 0:
        return None
    payload = torch.tensor(list(data), dtype=torch.uint8) if info.rank == src else torch.zeros(size, dtype=torch.uint8)
    on_device = _to_device(payload, info)
    dist.broadcast(on_device, src=src)
    if info.rank == src:
        return text
    return bytes(_to_host(on_device).numpy().tobytes())[1:].decode("utf-8")
