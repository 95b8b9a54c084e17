"""Where a script runs: the distributed set-up, the device, the precisions, the logger, the seeds and the
reference-image cache, gathered once in a `Run`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.log import get_logger, setup_logger
from dataloaders.ref_cache import ReferenceCache, build_reference_cache
from tools.run_folder import RunLock
from tools.utils import (
    DEFAULT_DIST_TIMEOUT_MIN,
    DistInfo,
    Precision,
    configure_cuda,
    init_distributed,
    resolve_precision,
    seed_everything,
)


@dataclass
class Run:
    """What the loops need to know about where they run."""

    dist: DistInfo
    device: torch.device
    precision: Precision  # training
    eval_precision: Precision | None = None  # evaluation; None = fp32
    lock: RunLock | None = None
    ref_cache: ReferenceCache | None = None

    @property
    def pin_memory(self) -> bool:
        """Whether loaders pin their batches: for a CUDA run only (its device is the current one)."""
        return self.device.type == "cuda"

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size): which share of the test batches this process evaluates."""
        return self.dist.rank, self.dist.world_size

    def evaluation_precision(self) -> Precision:
        """The precision of evaluation: fp32 unless mixed precision was asked for it (--eval_amp)."""
        return self.eval_precision or Precision(self.device.type, None)

    def close(self) -> None:
        """Release the checkpoint folder's lock (training runs)."""
        if self.lock is not None:
            self.lock.release()


def run_options(args: argparse.Namespace) -> dict:
    """The settings of a parsed command line that `setup_run` takes, the log going to <checkpoint_dir>/log."""
    return {"gpu_ids": args.gpu_ids, "seed": args.seed, "amp": args.amp, "eval_amp": args.eval_amp,
            "log_file": os.path.join(args.log_checkpoint_dir, "log.txt"), "ref_cache_gb": args.ref_cache_gb,
            "num_workers": args.num_workers, "deterministic": args.deterministic, "dist_timeout": args.dist_timeout}


def setup_run(*, gpu_ids: str | None, seed: int, amp: str = "off", eval_amp: str = "off",
              log_file: str | None = None, ref_cache_gb: float | None = 0, num_workers: int = 0,
              deterministic: bool = False, dist_timeout: float = DEFAULT_DIST_TIMEOUT_MIN,
              prepare: Callable[[DistInfo], RunLock | None] | None = None) -> Run:
    """Distributed set-up (collectives wait `dist_timeout` minutes) and device (from `gpu_ids`), then `prepare`
    (e.g. lock the checkpoint folder and write the options file), the logger (`log_file` on rank 0), the seeds,
    the precisions and the reference cache (`ref_cache_gb`: None = automatic size, 0 = off; a size is for the
    whole machine, divided among the processes torchrun started on it). CUDA's settings come first
    (`configure_cuda`)."""
    configure_cuda(deterministic)
    info, device = init_distributed(gpu_ids, dist_timeout)
    lock = prepare(info) if prepare is not None else None
    setup_logger(log_file, info.is_main)
    seed_everything(seed)
    precision, eval_precision = resolve_precision(amp, device), resolve_precision(eval_amp, device)
    get_logger().info(f"device {device}, precision {precision.dtype or 'fp32'} "
                      f"(evaluation {eval_precision.dtype or 'fp32'}), world size {info.world_size}, seed {seed}, "
                      f"{num_workers} loader workers{', deterministic' if deterministic else ''}")
    ref_cache = build_reference_cache(ref_cache_gb, num_workers, local_processes=info.local_world_size)
    get_logger().info(ref_cache.describe() if ref_cache is not None else "reference cache: off")
    return Run(info, device, precision, eval_precision, lock, ref_cache)
