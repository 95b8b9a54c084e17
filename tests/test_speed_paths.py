"""The GPU speed paths, on the CPU: CUDA settings, channels-last, defaults sized to the machine, --compile,
and a training loop that reads the losses from the device every few steps rather than every step."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

from models.DistillationIQA import DistillationIQANet
from option_train_DistillationIQA import set_args, set_single_args
from tests.fakes import FixedBatches
from tools import epoch as engine_epoch
from tools import networks, run_folder, utils
from tools.epoch import NonFiniteLossError, train_one_epoch
from tools.runtime import Run
from tools.utils import DistInfo, resolve_precision


@pytest.fixture
def cuda_flags():
    """Restores the process-wide flags that `configure_cuda` sets."""
    saved = (utils.tf32_flags(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    tf32, benchmark, deterministic, algorithms, workspace = saved
    utils.set_tf32(tf32["matmul"])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic
    torch.use_deterministic_algorithms(algorithms)
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def test_configure_cuda_fp32_autotuning_and_deterministic(cuda_flags, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    utils.set_tf32(True)
    assert utils.tf32_flags() == {"matmul": True, "cudnn": True}
    utils.configure_cuda(deterministic=False)
    assert utils.tf32_flags() == {"matmul": False, "cudnn": False}  # fp32 is real fp32
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    utils.configure_cuda(deterministic=True)
    assert utils.tf32_flags() == {"matmul": False, "cudnn": False}
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    utils.configure_cuda(deterministic=False)  # a later run in the same process is not left deterministic
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(("cpus", "local_processes", "expected"),
                         [(16, None, 15), (64, "1", 16), (16, "8", 1), (16, "16", 0), (1, None, 0), (96, "4", 16)])
def test_default_workers_share_the_cpus_among_the_local_processes(monkeypatch, cpus, local_processes, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    if local_processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    assert utils.default_num_workers() == expected


def test_default_workers_without_an_affinity_mask_count_the_cpus(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert utils.default_num_workers() == 7


def test_auto_options_resolve_to_numbers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    args = set_args(["--gpu_ids", "cpu"])
    assert (args.num_workers, args.test_batch_size, args.compile, args.deterministic) == (2, 8, False, False)
    args = set_args(["--gpu_ids", "cpu", "--num_workers", "3", "--test_batch_size", "5", "--compile",
                     "--deterministic"])
    assert (args.num_workers, args.test_batch_size, args.compile, args.deterministic) == (3, 5, True, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert set_single_args(["--lq", "x.png", "--gpu_ids", "0"]).test_batch_size == 32  # a CUDA run
    assert set_single_args(["--lq", "x.png", "--gpu_ids", "cpu"]).test_batch_size == 8
    with pytest.raises(SystemExit) as exit_info:
        set_args(["--num_workers", "many"])
    assert exit_info.value.code == 2


def test_resume_may_change_the_speed_options():
    assert {"deterministic", "compile", "num_workers", "test_batch_size"} <= set(run_folder.MAY_CHANGE_OPTIONS)


def test_compile_wraps_only_when_asked(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or ("compiled", module))
    module = nn.Linear(2, 2)
    assert networks.maybe_compile(module, False) is module and not compiled
    assert networks.maybe_compile(module, True) == ("compiled", module) and compiled == [module]


def _tiny_net() -> DistillationIQANet:
    torch.manual_seed(7)
    return DistillationIQANet(self_patch_num=1, MLP_depth=1, distillation_layer=2, pretrained=False).eval()


def test_channels_last_gives_the_contiguous_predictions_at_any_batch_size():
    contiguous = _tiny_net()
    channels_last = networks.set_memory_format(copy.deepcopy(contiguous), True)
    assert channels_last.feature_extractor.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert networks.prefers_channels_last(torch.device("cuda"))
    assert not networks.prefers_channels_last(torch.device("cpu"))
    seen = []
    channels_last.feature_extractor.conv1.register_forward_pre_hook(
        lambda module, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    gen = torch.Generator().manual_seed(1)
    lq, ref = torch.rand(2, 1, 3, 32, 32, generator=gen), torch.rand(2, 1, 3, 32, 32, generator=gen)
    with torch.inference_mode():
        expected = contiguous(lq, ref)[2]
        one_at_a_time = torch.cat([channels_last(lq[i:i + 1], ref[i:i + 1])[2] for i in range(2)])
        batched = channels_last(lq, ref)[2]
    assert seen and all(seen)  # the inputs followed the network into channels-last
    torch.testing.assert_close(one_at_a_time, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-5)


def test_cpu_networks_stay_contiguous():
    net = networks.build_network(torch.device("cpu"), self_patch_num=1, distillation_layer=2)
    assert not net.feature_extractor.conv1.weight.is_contiguous(memory_format=torch.channels_last)


# ---- the training loop's host synchronisations ----------------------------------------------------------
class _Linear(nn.Module):
    """pred = w * mean(lq) + mean(ref), with the network's return shape."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, lq, ref):
        return [], [], self.w * lq.mean(dim=(1, 2, 3, 4)) + ref.mean(dim=(1, 2, 3, 4))


def _batches(n: int, nan_at: int | None = None) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for step in range(1, n + 1):
        lq = torch.rand(2, 1, 3, 4, 4, generator=gen)
        if step == nan_at:
            lq[0] = float("nan")
        out.append({"lq": lq, "hq": torch.rand(2, 1, 3, 4, 4, generator=gen),
                    "label": torch.rand(2, generator=gen), "index": torch.arange(2)})
    return out


def _epoch(batches: list[dict]) -> dict:
    model = _Linear()
    device = torch.device("cpu")
    run = Run(DistInfo(), device, resolve_precision("off", device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed weights: the losses are known
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_one_epoch(model, FixedBatches(batches), optimizer, scaler, run, epoch=0)


def test_losses_are_read_every_few_steps_not_every_step(monkeypatch):
    monkeypatch.setattr(engine_epoch, "LOSS_READ_EVERY", 2)
    reads, items = [], []
    real_read, real_item = engine_epoch._read_losses, torch.Tensor.item
    monkeypatch.setattr(engine_epoch, "_read_losses", lambda pending, *a: reads.append(len(pending))
                        or real_read(pending, *a))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: items.append(1) or real_item(self))
    batches = _batches(5)
    stats = _epoch(batches)
    assert reads == [2, 2, 1] and not items  # steps 2, 4 and the end; no per-step .item()
    expected = np.mean([float((0.5 * b["lq"].mean(dim=(1, 2, 3, 4)) + b["hq"].mean(dim=(1, 2, 3, 4))
                               - b["label"]).abs().mean()) for b in batches])
    assert stats["loss"] == pytest.approx(expected, rel=1e-6)


def test_a_nan_loss_found_later_still_names_its_iteration(monkeypatch):
    monkeypatch.setattr(engine_epoch, "LOSS_READ_EVERY", 4)
    with pytest.raises(NonFiniteLossError, match="the loss is nan at epoch 0, iteration 3$"):
        _epoch(_batches(5, nan_at=3))
