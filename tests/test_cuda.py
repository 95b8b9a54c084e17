"""What only a GPU can show (run with `pytest -m cuda` on a machine with CUDA; skipped elsewhere, and in CI):
fp16 training steps with a GradScaler, resume across precisions and the CUDA RNG state on a real GPU, a
CUDA-written checkpoint read by a CPU-only process, fp32 evaluation on CUDA against the CPU, the scorer on CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.files import atomic_torch_save
from models.DistillationIQA import DistillationIQANet
from tests.fakes import FixedBatches
from tools.dataset_fixtures import write_image
from tools.epoch import train_one_epoch
from tools.runtime import Run
from tools.scorer import IQAScorer
from tools.training_state import RunRecord, TrainingState
from tools.utils import DistInfo, resolve_precision

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m cuda)")]
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda", 0)
# fp32 on CUDA against fp32 on the CPU (TF32 off): the same sums in another order. The prediction is a dot
# product of 256 terms of a few units; float32 reorderings move it by ~1e-6, layer upon layer by well under 1e-4.
CPU_CUDA_ATOL = 1e-4


def small_net(seed: int = 0) -> DistillationIQANet:
    torch.manual_seed(seed)
    return DistillationIQANet(self_patch_num=2, MLP_depth=2, distillation_layer=4, pretrained=False)




def batches(n: int, label_scale: float = 1.0) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    shape = (4, 2, 3, 32, 32)
    return [{"lq": torch.rand(shape, generator=gen), "hq": torch.rand(shape, generator=gen),
             "label": label_scale * torch.rand(4, generator=gen), "index": torch.arange(4)} for _ in range(n)]


@pytest.fixture
def no_tf32():
    """Real fp32 on the GPU for the comparisons with the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_fp16_training_steps_with_a_grad_scaler():
    net = small_net().to(CUDA)
    precision = resolve_precision("auto", CUDA)
    assert precision.name == "fp16" and precision.use_scaler
    run = Run(DistInfo(), CUDA, precision)
    state = TrainingState.start(net, precision.scaler(), round_index=0, lr=1e-4, lr_ratio=10, weight_decay=0,
                                precision=precision.name, device=CUDA)
    stats = train_one_epoch(net, FixedBatches(batches(4, label_scale=1500.0)), state.optimizer, state.scaler, run, 0)
    assert np.isfinite(stats["loss"]) and np.isfinite(stats["train_srcc"])
    scale = state.scaler.get_scale()
    assert 0 < scale <= 2.0**16 and np.isfinite(scale)  # halved on an overflow, else kept
    assert all(bool(torch.isfinite(p).all()) for p in net.trainable_parameters())
    with torch.no_grad(), precision.autocast():
        pred = net(*(b.to(CUDA) for b in (batches(1)[0]["lq"], batches(1)[0]["hq"])))[2]
    assert pred.dtype == torch.float32  # the score head runs in fp32 under fp16 autocast


def test_resume_across_precisions_and_the_rng_state_on_a_gpu(tmp_path):
    bf16 = TrainingState.start(small_net(), torch.amp.GradScaler("cuda", enabled=False), round_index=0, lr=1e-4,
                               lr_ratio=10, weight_decay=0, precision="bf16", device=CUDA)
    path = tmp_path / "bf16.pth"
    atomic_torch_save(bf16.checkpoint(RunRecord("teacher", {})), path)
    expected = torch.rand(3, device=CUDA)  # drawn after the state was saved
    resumed = torch.load(path, weights_only=True)
    assert resumed["precision"] == "bf16" and torch.is_tensor(resumed["rng"]["cuda"])
    state = TrainingState.start(small_net(1).to(CUDA), torch.amp.GradScaler("cuda", enabled=True), round_index=0,
                                lr=1e-4, lr_ratio=10, weight_decay=0, precision="fp16", device=CUDA,
                                resumed=resumed)
    assert state.scaler.is_enabled() and state.scaler.get_scale() == 2.0**16  # a fresh scaler, no error
    assert torch.equal(torch.rand(3, device=CUDA), expected)  # the GPU's generator continues exactly


def test_a_cuda_checkpoint_loads_in_a_cpu_only_process(tmp_path):
    net = small_net().to(CUDA)
    state = TrainingState.start(net, torch.amp.GradScaler("cuda"), round_index=0, lr=1e-4, lr_ratio=10,
                                weight_decay=0, precision="fp16", device=CUDA)
    run = Run(DistInfo(), CUDA, resolve_precision("fp16", CUDA))
    train_one_epoch(net, FixedBatches(batches(1)), state.optimizer, state.scaler, run, 0)  # Adam's state on the GPU
    path = tmp_path / "last.pth"
    atomic_torch_save(state.checkpoint(RunRecord("teacher", {})), path)
    code = ("import sys, torch\n"
            "assert not torch.cuda.is_available()\n"
            "state = torch.load(sys.argv[1])\n"  # plain: no map_location
            "def walk(v):\n"
            "    if torch.is_tensor(v): yield v\n"
            "    elif isinstance(v, dict): yield from (t for x in v.values() for t in walk(x))\n"
            "    elif isinstance(v, (list, tuple)): yield from (t for x in v for t in walk(x))\n"
            "found = list(walk(state))\n"
            "assert found and all(t.device.type == 'cpu' for t in found)\n"
            "print(len(found), state['precision'])\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[1] == "fp16"


def test_fp32_evaluation_on_cuda_matches_the_cpu(no_tf32):
    net = small_net().eval()
    lq, ref = batches(1)[0]["lq"], batches(1)[0]["hq"]
    with torch.no_grad():
        on_cpu = net(lq, ref)[2]
        on_cuda = net.to(CUDA)(lq.to(CUDA), ref.to(CUDA))[2].cpu()
    torch.testing.assert_close(on_cuda, on_cpu, rtol=0, atol=CPU_CUDA_ATOL)


def test_the_scorer_on_cuda_matches_the_cpu(tmp_path, no_tf32):
    net = small_net().eval()
    refs = [write_image(tmp_path / f"ref{i}.png", (64, 48), variant=i) for i in range(2)]
    lqs = [write_image(tmp_path / f"lq{i}.png", (64, 48), variant=10 + i) for i in range(3)]
    options = {"patch_size": 32, "repeats": 2, "batch_size": 2, "seed": 1}
    on_cpu = IQAScorer(net, refs, **options).score(lqs)
    on_cuda = IQAScorer(net, refs, device=CUDA, **options).score(lqs)
    np.testing.assert_allclose(on_cuda, on_cpu, rtol=0, atol=CPU_CUDA_ATOL)
