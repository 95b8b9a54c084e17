"""What a GPU run needs from precision, checkpoints and resume, shown on the CPU: resume across precisions
(an enabled CPU GradScaler stands for CUDA fp16), the run's own CUDA RNG state (torch.cuda mocked), CPU tensors
in checkpoints (a tensor that reports a CUDA device), the score head in fp32 under autocast, fp32 evaluation of
a bf16 training run, and the oldest torch."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import option_train_DistillationIQA_FR as teacher_options
import train_DistillationIQA_FR
from common.errors import UserError, run_cli
from common.versions import check_torch_version
from models.DistillationIQA import DistillationIQANet
from tools import checkpoint as ckpt
from tools import engine
from tools.dataset_fixtures import make_tid2013
from tools.training_state import RunRecord, TrainingState, resume_scaler

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net() -> DistillationIQANet:
    torch.manual_seed(0)
    return DistillationIQANet(self_patch_num=2, MLP_depth=1, distillation_layer=1, pretrained=False)


def start(net: DistillationIQANet, scaler: torch.amp.GradScaler, precision: str,
          resumed: dict | None = None) -> TrainingState:
    return TrainingState.start(net, scaler, round_index=0, lr=1e-4, lr_ratio=10, weight_decay=0,
                               precision=precision, resumed=resumed)


def saved(net: DistillationIQANet, scaler: torch.amp.GradScaler, precision: str) -> dict:
    """The training checkpoint of a run with `scaler` in `precision` (as saved; tensors are not copied)."""
    return start(net, scaler, precision).checkpoint(RunRecord("teacher", {}))


# ---- resume across precisions --------------------------------------------------------------------------
def test_a_checkpoint_without_scaler_state_resumes_in_fp16_with_a_fresh_scaler(net):
    bf16 = saved(net, torch.amp.GradScaler("cpu", enabled=False), "bf16")  # CPU --amp bf16: a disabled scaler
    assert bf16["scaler"] == {} and bf16["precision"] == "bf16"
    fp16 = torch.amp.GradScaler("cpu", enabled=True)  # CUDA fp16 (loading {} into it: "source state dict is empty")
    state = start(net, fp16, "fp16", resumed=bf16)
    assert state.scaler.get_scale() == 2.0**16 and state.precision == "fp16"
    assert resume_scaler(torch.amp.GradScaler("cpu", enabled=True), bf16["scaler"], "bf16", "fp16") == [
        "resume: the checkpoint was trained in bf16; this run continues in fp16 with a fresh GradScaler"]


def test_an_fp16_scaler_state_is_continued_and_a_change_to_fp32_is_logged(net):
    fp16 = saved(net, torch.amp.GradScaler("cpu", init_scale=8.0, enabled=True), "fp16")
    assert fp16["scaler"]["scale"] == 8.0
    assert start(net, torch.amp.GradScaler("cpu", enabled=True), "fp16", resumed=fp16).scaler.get_scale() == 8.0
    assert resume_scaler(torch.amp.GradScaler("cpu", enabled=True), fp16["scaler"], "fp16", "fp16") == []
    # CUDA fp16 resumed on the CPU (--amp auto: fp32 there): said, not silent
    assert resume_scaler(torch.amp.GradScaler("cpu", enabled=False), fp16["scaler"], "fp16", "fp32") == [
        "resume: the checkpoint was trained in fp16; this run continues in fp32"]
    # checkpoints written before the precision was recorded: a scaler state means fp16
    assert resume_scaler(torch.amp.GradScaler("cpu", enabled=False), fp16["scaler"], None, "fp32") == [
        "resume: the checkpoint was trained in fp16; this run continues in fp32"]
    assert resume_scaler(torch.amp.GradScaler("cpu", enabled=False), {}, None, "bf16") == []
    assert resume_scaler(torch.amp.GradScaler("cpu", enabled=True), {}, None, "fp16") == [
        "resume: the checkpoint records no precision (it was not fp16); this run continues in fp16 "
        "with a fresh GradScaler"]


# ---- the CUDA RNG state: the run's own GPU -------------------------------------------------------------
class FakeCuda:
    """`torch.cuda`'s RNG functions on a node with `count` GPUs: a state per GPU, IndexError past the last (as
    `torch.cuda.default_generators[index]`)."""

    def __init__(self, monkeypatch, count: int) -> None:
        self.count, self.set = count, {}
        for module in (torch.cuda, torch.cuda.random):  # the latter: what get/set_rng_state_all call
            monkeypatch.setattr(module, "get_rng_state", self.get_rng_state)
            monkeypatch.setattr(module, "set_rng_state", self.set_rng_state)
            monkeypatch.setattr(module, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def _index(self, device) -> int:
        index = torch.device(device).index if not isinstance(device, int) else device
        index = 0 if index is None else index
        if index >= self.count:
            raise IndexError("list index out of range")
        return index

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return torch.full((4,), 10 + self._index(device), dtype=torch.uint8)

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        self.set[self._index(device)] = int(state[0])


def test_rank_0_of_8_gpus_saves_its_own_state_and_resumes_with_1_gpu(monkeypatch):
    FakeCuda(monkeypatch, count=8)
    state = ckpt.rng_state(torch.device("cuda", 0))
    assert torch.equal(state["cuda"], torch.full((4,), 10, dtype=torch.uint8))  # GPU 0's, not a list of 8
    one = FakeCuda(monkeypatch, count=1)
    assert ckpt.set_rng_state(state, torch.device("cuda", 0)) == []
    assert one.set == {0: 10}


def test_a_checkpoint_with_every_gpus_state_resumes_on_fewer_gpus(monkeypatch):
    old = {**ckpt.rng_state(), "cuda": [torch.full((4,), 20 + i, dtype=torch.uint8) for i in range(8)]}
    two = FakeCuda(monkeypatch, count=2)
    assert ckpt.set_rng_state(old, torch.device("cuda", 1)) == []
    assert two.set == {1: 21}  # the entry of the run's own GPU
    few = {**old, "cuda": old["cuda"][:1]}
    assert ckpt.set_rng_state(few, torch.device("cuda", 1)) == [
        "resume: the checkpoint holds no CUDA RNG state for GPU 1 (it saved 1): that GPU's generator keeps its seed"]


def test_a_cpu_run_on_a_gpu_host_saves_and_restores_no_cuda_state(monkeypatch):
    fake = FakeCuda(monkeypatch, count=2)
    state = ckpt.rng_state(torch.device("cpu"))
    assert "cuda" not in state
    ckpt.set_rng_state({**state, "cuda": torch.zeros(4, dtype=torch.uint8)}, torch.device("cpu"))
    assert fake.set == {}


# ---- checkpoints hold CPU tensors ----------------------------------------------------------------------
class OnCuda(torch.Tensor):
    """A tensor that reports a CUDA device (as one on a GPU does); only a copy to the CPU works on it."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype,
                                                   device=torch.device("cuda", 0))

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and (kwargs or {}).get("device") == torch.device("cpu"):
            return args[0].inner.clone()
        raise NotImplementedError(f"{func} on a tensor of a (fake) GPU")


def on_cuda(value):
    if isinstance(value, torch.Tensor):
        return OnCuda(value)
    if isinstance(value, dict):
        return {k: on_cuda(v) for k, v in value.items()}
    if isinstance(value, list):
        return [on_cuda(v) for v in value]
    return value


def tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return [t for item in items for t in tensors(item)]


def test_checkpoints_of_a_gpu_run_hold_cpu_tensors(net, monkeypatch):
    state = start(net, torch.amp.GradScaler("cpu", enabled=False), "fp16")
    for param in net.trainable_parameters():
        param.grad = torch.ones_like(param)
    state.optimizer.step()  # the optimiser's per-parameter state (Adam's moments) exists
    model, optimizer = state.model.state_dict(), state.optimizer.state_dict()
    monkeypatch.setattr(state.model, "state_dict", lambda: on_cuda(model))
    monkeypatch.setattr(state.optimizer, "state_dict", lambda: on_cuda(optimizer))
    checkpoint = state.checkpoint(RunRecord("teacher", {}))
    found = tensors(checkpoint)
    assert len(found) > len(model) and all(type(t) is torch.Tensor and t.device.type == "cpu" for t in found)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # plain, without map_location
    assert torch.equal(loaded["model"]["regressor.l2.weight"], model["regressor.l2.weight"])
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], optimizer["state"][0]["exp_avg"])
    plain = ckpt.to_cpu(model)  # a CPU run: nothing is copied, the state dict keeps its version metadata
    assert all(plain[k] is v for k, v in model.items()) and plain._metadata == model._metadata


# ---- the score head runs in fp32 under autocast --------------------------------------------------------
def test_the_score_is_fp32_under_bf16_autocast(small_net):
    head = copy.deepcopy(small_net.regressor)
    with torch.no_grad():
        head.l2.bias.fill_(1500.0)  # PIPAL-scale scores, where a bf16 (or fp16) step is 8 (or 1)
    torch.manual_seed(1)
    features = torch.randn(64, head.l1.in_features).bfloat16()  # what the mixers give under autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        score = head(features)
    with torch.no_grad():
        fp32 = head(features.float())  # no autocast: plain fp32
    assert score.dtype == torch.float32
    torch.testing.assert_close(score, fp32, rtol=1e-6, atol=1e-4)
    assert (score % 8 != 0).any()  # not rounded to bf16's steps
    codes = [torch.rand(2, 2 * small_net.lda_channel, 7, 7) for _ in range(4)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = small_net.forward_from_codes(codes, [c.flip(0) for c in codes])[2]
    assert pred.dtype == torch.float32  # the network's prediction too


# ---- evaluation of a bf16 training run is fp32 ---------------------------------------------------------
def test_bf16_training_evaluates_every_epoch_in_fp32(tmp_path, monkeypatch):
    """--amp bf16 reaches the training epochs (and the checkpoint); the per-epoch evaluation's forward passes
    run without autocast.
    (The test script's fp32 under --amp bf16 is tested in test_faithful.py.)"""
    make_tid2013(tmp_path / "TID2013", n_refs=5, n_levels=1)
    trained, evaluated = [], []

    def training_epoch(model, loader, optimizer, scaler, run, epoch, **kwargs):
        trained.append(run.precision.dtype)
        return {"loss": 0.0, "train_srcc": float("nan"), "samples_per_s": 0.0, "data_share": 0.0}

    forward = DistillationIQANet.forward

    def spy(self, lq, ref):
        evaluated.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return forward(self, lq, ref)

    monkeypatch.setattr(engine, "train_one_epoch", training_epoch)
    monkeypatch.setattr(DistillationIQANet, "forward", spy)
    written = []
    monkeypatch.setattr(engine.files, "atomic_torch_save", lambda state, *paths: written.append(state))
    args = teacher_options.set_args(
        ["--train_dataset", "tid2013", "--test_dataset", "tid2013", "--train_test_num", "1", "--epochs", "1",
         "--patch_size", "8", "--self_patch_num", "2", "--distillation_layer", "4", "--pretrained", "false",
         "--gpu_ids", "cpu", "--num_workers", "0", "--amp", "bf16", "--dataset_dir", str(tmp_path),
         "--checkpoint_dir", str(tmp_path / "run")])
    train_DistillationIQA_FR.main(args)
    assert trained == [torch.bfloat16]
    assert evaluated and set(evaluated) == {False}
    assert [state["precision"] for state in written] == ["bf16"]  # the resolved precision, in the checkpoint


# ---- the oldest torch --------------------------------------------------------------------------------------
def test_torch_older_than_2_3_is_refused_in_one_line(monkeypatch, capsys):
    for fine in ("2.3.0", "2.3.1+cu121", "2.10.0", "2.14.1", "3.0.0a0"):
        check_torch_version(fine)
    with pytest.raises(UserError, match=r"^torch 2\.2\.1 is installed; this project needs torch >= 2\.3 "
                                        r"\(pip install -r requirements\.txt\)$"):
        check_torch_version("2.2.1")
    monkeypatch.setattr(torch, "__version__", "2.2.1")
    started = []
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: started.append(True))
    assert stop.value.code == 2 and started == []
    assert capsys.readouterr().err == ("error: torch 2.2.1 is installed; this project needs torch >= 2.3 "
                                       "(pip install -r requirements.txt)\n")
