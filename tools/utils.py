"""Runtime helpers shared by the scripts: device, seeding, distributed set-up, mixed precision."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from common.errors import UserError

DEFAULT_DIST_TIMEOUT_MIN = 60.0  # how long a collective waits for the slowest rank (torch: 10 minutes)


@dataclass
class DistInfo:
    """Where this process stands in a torchrun run; `device` is the run's device, where collectives happen."""

    distributed: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def wants_cpu(gpu_ids: str | None) -> bool:
    return gpu_ids is None or str(gpu_ids).strip().lower() in ("", "cpu", "-1")


def select_device(gpu_ids: str | None, local_rank: int | None = None) -> torch.device:
    """`--gpu_ids`: 'cpu', '-1' or '' -> CPU; otherwise the first id (or LOCAL_RANK under torchrun) on CUDA.

    Without CUDA the CPU is used, with a warning when a GPU was asked for explicitly.
    """
    if wants_cpu(gpu_ids):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if str(gpu_ids).strip() != "0":
            warnings.warn(f"--gpu_ids {gpu_ids}: CUDA is not available, running on the CPU", stacklevel=2)
        return torch.device("cpu")
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    first = str(gpu_ids).split(",")[0].strip()
    if not first.isdigit() or int(first) >= torch.cuda.device_count():
        raise UserError(f"--gpu_ids {gpu_ids}: no such GPU ({torch.cuda.device_count()} available)")
    return torch.device("cuda", int(first))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def local_processes() -> int:
    """How many processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def use_device(device: torch.device) -> None:
    """Make a CUDA `device` the current one, so that nothing (pinned-memory threads, CUDA contexts) lands on GPU 0."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def init_distributed(gpu_ids: str | None, timeout_minutes: float = DEFAULT_DIST_TIMEOUT_MIN
                     ) -> tuple[DistInfo, torch.device]:
    """The device, made current; under torchrun also join the process group (nccl on GPU, gloo on CPU), whose
    collectives wait `timeout_minutes` for the slowest rank before the run stops."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = select_device(gpu_ids)
        use_device(device)
        return DistInfo(device=device), device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = select_device(gpu_ids, local_rank=local_rank)
    info = DistInfo(True, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, device,
                    local_processes())
    use_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes))
    return info, device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Precision:
    """Mixed-precision set-up for one device: the autocast dtype (or None) and whether to scale losses."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        """'fp32', 'fp16' or 'bf16': the resolved precision (what a checkpoint records)."""
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    @property
    def use_scaler(self) -> bool:
        return self.device_type == "cuda" and self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.use_scaler)


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags (Linux /proc/cpuinfo names) of bf16 arithmetic units


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags listed in /proc/cpuinfo (or in the given text); empty where there is none."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 arithmetic units (AVX512-BF16 or AMX), from its feature flags.

    oneDNN's own "bf16 supported" answer is not used: it is also true where bf16 is emulated with AVX-512,
    which is about twice as slow as fp32.
    """
    return any(flag in cpu_flags(cpuinfo) for flag in NATIVE_BF16_FLAGS)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """`--amp auto|off|fp16|bf16`: auto is fp16 on CUDA and off (fp32) on CPU."""
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "off"
    if amp == "off":
        return Precision(device.type, None)
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp off")
    return Precision(device.type, torch.float16 if amp == "fp16" else torch.bfloat16)


def note_training_amp_in_testing(amp: str, eval_amp: str) -> None:
    """In a test script, `--amp fp16|bf16` alone does not change the evaluation's precision: say so once."""
    if amp in ("fp16", "bf16") and eval_amp == "off":
        print(f"note: --amp {amp} sets the precision of training; evaluation runs in fp32 "
              f"(ask for mixed precision with --eval_amp {amp})", file=sys.stderr)


# ---- CUDA speed and reproducibility settings ----------------------------------------------------------
CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results (CUBLAS_WORKSPACE_CONFIG)


def _has_fp32_precision_api() -> bool:
    """Whether this torch sets TF32 through the `fp32_precision` flags (2.9 on); it refuses mixing them with the
    older `allow_tf32` flags, so only one of the two is ever touched."""
    return hasattr(torch.backends.cuda.matmul, "fp32_precision")


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions on (faster, ~10-bit mantissa) or off (real fp32)."""
    if _has_fp32_precision_api():
        value = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
        torch.backends.cudnn.rnn.fp32_precision = value
    else:  # torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_flags() -> dict[str, bool]:
    """Whether TF32 is allowed for CUDA matmuls and for cuDNN convolutions now."""
    if _has_fp32_precision_api():
        return {"matmul": torch.backends.cuda.matmul.fp32_precision == "tf32",
                "cudnn": torch.backends.cudnn.conv.fp32_precision == "tf32"}
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def configure_cuda(deterministic: bool) -> None:
    """The process-wide CUDA settings of a run: TF32 off (fp32 means fp32, in training with `--amp off` and in
    evaluation); cuDNN autotuning on, or with `deterministic` (--deterministic) cuDNN's deterministic kernels,
    PyTorch's deterministic algorithms and the cuBLAS workspace setting that bit-exact GPU runs need.
    Set on every device (the flags exist without CUDA and change nothing on the CPU)."""
    set_tf32(False)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE


# ---- defaults sized to the machine ----------------------------------------------------------------------
MAX_DEFAULT_WORKERS = 16
CUDA_TEST_BATCH_SIZE, CPU_TEST_BATCH_SIZE = 32, 8


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """`--num_workers auto`: the CPUs of this process's share of the machine (LOCAL_WORLD_SIZE processes under
    torchrun), one left for the training loop itself, at most 16."""
    return max(0, min(MAX_DEFAULT_WORKERS, available_cpus() // local_processes() - 1))


def default_test_batch_size(gpu_ids: str | None) -> int:
    """`--test_batch_size auto`: 32 images per batch where the run uses CUDA, 8 on the CPU."""
    on_cuda = not wants_cpu(gpu_ids) and torch.cuda.is_available()
    return CUDA_TEST_BATCH_SIZE if on_cuda else CPU_TEST_BATCH_SIZE
