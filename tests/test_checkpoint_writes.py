"""Checkpoint and result writes are atomic (a failed write keeps the old file, leaves no temporary file),
and the RNG state round trip restores every generator the training touches."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from common import files
from common.errors import UserError
from tools import checkpoint as ckpt


def _old_files(tmp_path):
    path, other = tmp_path / "last.pth", tmp_path / "best.pth"
    files.atomic_torch_save({"epoch": 1}, path, other)
    return path, other, path.read_bytes(), other.read_bytes()


def _assert_unchanged(tmp_path, files: dict) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)  # no temporary file left
    for path, data in files.items():
        assert path.read_bytes() == data
    assert torch.load(next(iter(files)), weights_only=True) == {"epoch": 1}


@pytest.mark.parametrize("failing", ["os.replace", "fsync", "torch.save"])
def test_failed_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch, failing):
    path, other, old, old_other = _old_files(tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    if failing == "os.replace":
        monkeypatch.setattr(files.os, "replace", boom)
    elif failing == "fsync":
        monkeypatch.setattr(files.os, "fsync", boom)
    else:
        monkeypatch.setattr(files.torch, "save", boom)
    # a failing file system reaches the user as one line naming the file (UserError); a failing
    # serialisation happens before any file is touched and propagates as it is
    expected = (OSError, "disk full") if failing == "torch.save" \
        else (UserError, r"cannot write .*last\.pth: disk full")
    with pytest.raises(expected[0], match=expected[1]):
        files.atomic_torch_save({"epoch": 2}, path, other)
    _assert_unchanged(tmp_path, {path: old, other: old_other})


def test_interrupted_text_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    files.write_csv(path, [{"epoch": 0, "loss": 1.5}])
    old = path.read_bytes()
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write_csv(path, [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": 1.2}])
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"] and path.read_bytes() == old


def _draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(3).tolist(), torch.randint(0, 1000, (2,)).tolist())


def test_rng_state_round_trip_through_a_saved_checkpoint(tmp_path):
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    random.gauss(0, 1)  # leave a cached Gaussian in Python's generator
    np.random.randn()  # and draw numpy's Gaussians in pairs' first half, so it caches one too
    path = tmp_path / "rng.pth"
    files.atomic_torch_save({"rng": ckpt.rng_state()}, path)
    expected = _draws()
    _draws()  # move every generator on
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt.set_rng_state(torch.load(path, weights_only=True)["rng"])  # through the safe loader, as --resume
    assert _draws() == expected
    assert _draws() != expected  # the generators do move: the equality above is not trivial

