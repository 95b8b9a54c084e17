"""The learning rates the optimiser actually uses at each epoch of the real training loop."""

from __future__ import annotations

import csv
import math

import pytest

import train_DistillationIQA_FR
from option_train_DistillationIQA_FR import set_args
from tools import engine
from tools.dataset_fixtures import make_kadid


def expected_lrs(lr: float, lr_ratio: float, update_opt_epoch: int, epochs: int) -> list[tuple[float, float]]:
    """(head lr, backbone lr) used in each epoch, from the rule itself: after (0-based) epoch t the lr is divided
    by 10^(t // update_opt_epoch), compounding; lr_ratio is the original's until epoch 21, 1 from epoch 22 on."""
    out = []
    for epoch in range(epochs):
        exponent = sum(t // update_opt_epoch for t in range(epoch))  # every division so far
        current = lr / 10**exponent
        ratio = lr_ratio if epoch <= 21 else 1.0
        out.append((current * ratio, current))
    return out


def test_optimizer_lr_at_every_epoch_of_the_loop(tmp_path, monkeypatch):
    make_kadid(tmp_path / "dataset" / "kadid10k", n_refs=1, n_types=1, n_levels=2)
    used, optimizers = [], []

    def recording_epoch(model, loader, optimizer, scaler, run, epoch, **kwargs):
        used.append(tuple(group["lr"] for group in optimizer.param_groups))
        optimizers.append(optimizer)
        return {"loss": 0.0, "train_srcc": float("nan"), "samples_per_s": 0.0, "data_share": 0.0}

    monkeypatch.setattr(engine, "train_one_epoch", recording_epoch)
    monkeypatch.setattr(engine.files, "atomic_torch_save", lambda *a, **k: None)  # 23 checkpoints: not needed here
    monkeypatch.chdir(tmp_path)
    epochs = 23
    args = set_args(["--epochs", str(epochs), "--update_opt_epoch", "10", "--lr", "1.0", "--lr_ratio", "10",
                     "--patch_size", "32", "--self_patch_num", "2", "--distillation_layer", "4",
                     "--pretrained", "false", "--gpu_ids", "cpu", "--num_workers", "0", "--test_datasets", "live",
                     "--checkpoint_dir", "run"])
    train_DistillationIQA_FR.main(args)

    want = expected_lrs(1.0, 10.0, 10, epochs)
    assert len(used) == epochs
    for epoch, (got, (head, backbone)) in enumerate(zip(used, want)):
        assert got == pytest.approx((head, backbone), rel=1e-9), f"epoch {epoch}"
    # spot values written out: epochs 0-10 at lr 1; 11 at 1e-1, 12 at 1e-2 (compounding); 21 at 1e-12, 22 at 1e-14
    assert [round(-math.log10(b)) for _, b in used] == [0] * 11 + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14]
    assert used[21][0] / used[21][1] == pytest.approx(10) and used[22][0] / used[22][1] == pytest.approx(1)
    assert len({id(o) for o in optimizers}) == epochs  # a new optimiser every epoch, as the original
    with open(tmp_path / "run" / "results" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    # the CSV reports the lr and lr_ratio that were used
    reported = [(float(r["lr"]) * float(r["lr_ratio"]), float(r["lr"])) for r in rows]
    assert len(reported) == epochs
    for epoch, (row, got) in enumerate(zip(reported, used)):
        assert row == pytest.approx(got, rel=1e-9), f"epoch {epoch}"
