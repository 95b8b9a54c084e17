"""`python -m tools.export_checkpoint IN OUT`: any checkpoint -> a plain state dict in the released format."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from models.DistillationIQA import UNUSED_CHECKPOINT_KEYS, DistillationIQANet
from tools.export_checkpoint import PLACEHOLDERS, export_checkpoint

ROOT = Path(__file__).resolve().parents[1]
KEYS_FILE = ROOT / "tests" / "data" / "state_dict_keys.tsv"


def released_format() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, role = line.split("\t")
            rows.append((key, tuple(int(v) for v in shape.strip("()").split(",") if v.strip()), role))
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A network with non-default weights everywhere (BN statistics too), saved as this project's checkpoint."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(3)
    net = DistillationIQANet(pretrained=False)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.01)
        net.regressor.bn1.num_batches_tracked.fill_(7)
    checkpoint = {"model": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 4,
                  "optimizer": {"state": {}, "param_groups": []}, "args": {"train_dataset": "live"}}
    torch.save(checkpoint, folder / "ours.pth")
    return folder, net.eval()


def test_export_has_exactly_the_released_keys_and_predicts_the_same(trained):
    folder, net = trained
    out = folder / "exported.pth"
    result = subprocess.run([sys.executable, "-m", "tools.export_checkpoint", str(folder / "ours.pth"), str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "679 keys" in result.stdout and "14 unused keys filled with placeholders" in result.stdout
    state = torch.load(out, map_location="cpu", weights_only=True)  # plain torch.load, as the original does
    expected = released_format()
    assert list(state) == [key for key, _, _ in expected]  # every key, in the released files' order
    assert {k: tuple(v.shape) for k, v in state.items()} == {key: shape for key, shape, _ in expected}
    assert {key for key, _, role in expected if role == "unused"} == set(PLACEHOLDERS) == UNUSED_CHECKPOINT_KEYS
    # placeholders: PReLU 0.25 (PyTorch's default), BatchNorm weight 1 / bias 0, the rest 0
    assert torch.equal(state["regressor.relu1.weight"], torch.full((1,), 0.25))
    assert torch.equal(state["regressor.bn1.weight"], torch.ones(256))
    assert torch.equal(state["regressor.bn1.bias"], torch.zeros(256))
    assert all(not state[k].any() for k in PLACEHOLDERS if k.startswith("feature_extractor."))
    own = net.state_dict()
    assert all(torch.equal(state[k], own[k]) for k in own)  # every used tensor and buffer unchanged
    reloaded = DistillationIQANet.from_checkpoint(out).eval()
    lq, ref = torch.randn(2, 10, 3, 32, 32), torch.randn(2, 10, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(lq, ref)[2], net(lq, ref)[2])


def test_exporting_a_released_file_keeps_its_unused_tensors(trained, tmp_path):
    folder, _ = trained
    first = export_checkpoint(folder / "ours.pth", tmp_path / "a.pth")[0]
    released = dict(first)
    released["regressor.relu1.weight"] = torch.tensor([0.7])  # as if trained by the authors' code
    released["feature_extractor.lda1_fc.bias"] = torch.arange(512.0)
    torch.save(released, tmp_path / "released.pth")
    again, kept = export_checkpoint(tmp_path / "released.pth", tmp_path / "b.pth")
    assert sorted(kept) == sorted(PLACEHOLDERS)
    assert list(again) == list(released) and all(torch.equal(again[k], released[k]) for k in released)


def test_export_errors_are_one_line(trained, tmp_path):
    folder, _ = trained
    with pytest.raises(UserError, match="checkpoint not found"):
        export_checkpoint(tmp_path / "missing.pth", tmp_path / "x.pth")
    with pytest.raises(UserError, match="is a folder"):
        export_checkpoint(folder / "ours.pth", tmp_path)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a checkpoint that can be loaded safely"):
        export_checkpoint(tmp_path / "text.pth", tmp_path / "x.pth")
    torch.save({"model": {"something.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="missing keys"):
        export_checkpoint(tmp_path / "other.pth", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    result = subprocess.run([sys.executable, "-m", "tools.export_checkpoint", str(tmp_path / "missing.pth"),
                             str(tmp_path / "x.pth")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "checkpoint not found" in result.stderr
