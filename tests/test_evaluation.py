"""Evaluation: the mean over test_patch_num repeats per image, and the within-dataset rounds (splits, median)."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from torch import nn

import train_DistillationIQA_FR
from dataloaders.sampling import to_model_input
from option_train_DistillationIQA_FR import set_args
from tools import engine
from tools.data import build_test_sets
from tools.dataset_fixtures import make_tid2013
from tools.epoch import predict
from tools.runtime import Run
from tools.utils import DistInfo, resolve_precision


class MeanPixelNet(nn.Module):
    """A stand-in network whose score of an item is the mean of its LQ patches' values."""

    def forward(self, lq: torch.Tensor, ref: torch.Tensor):
        return [], [], lq.double().mean(dim=(1, 2, 3, 4)).float()


def _run() -> Run:
    device = torch.device("cpu")
    return Run(DistInfo(), device, resolve_precision("off", device))


def test_test_patch_num_averages_the_repeats_of_each_image(tmp_path):
    entries = make_tid2013(tmp_path / "TID2013", n_refs=2)
    (test_set,) = build_test_sets(["tid2013"], "lq_hq", dataset_paths={"tid2013": str(tmp_path / "TID2013")},
                                  patch_size=8, patch_num=2, seed=3, repeats=3, batch_size=4)
    dataset = test_set.loader.dataset
    assert len(dataset) == 3 * len(entries)  # each image 3 times: --test_patch_num reaches the dataset
    pred, labels = predict(MeanPixelNet(), test_set.loader, _run(), epoch=5, ref_key="hq")
    # by hand: the items of each image (its repeats), scored one by one, averaged per image
    per_image: dict = {}
    for index, sample in enumerate(dataset.samples):
        item = dataset[(index, 5)]
        lq = to_model_input(item["lq"], "cpu")  # items are uint8; the network sees them normalised
        per_image.setdefault(sample.lq_path, []).append(lq.double().mean().item())
    assert all(len(v) == 3 for v in per_image.values())
    assert any(np.std(v) > 0 for v in per_image.values())  # the repeats are different crops
    np.testing.assert_allclose(pred, [np.mean(v) for v in per_image.values()], rtol=1e-6)
    assert sorted(labels) == sorted(e.label for e in entries) and len(pred) == len(entries)


ROUND_METRICS = [  # per round: median 0.2 / 0.5 / 0.3, means 0.4 / 0.5 / 0.367 (a mean would be caught)
    {"srcc": 0.1, "plcc": 0.5, "krcc": 0.3},
    {"srcc": 0.9, "plcc": 0.9, "krcc": 0.6},
    {"srcc": 0.2, "plcc": 0.1, "krcc": 0.2},
]


def test_within_dataset_rounds_split_contents_and_report_the_median(tmp_path, monkeypatch):
    make_tid2013(tmp_path / "dataset" / "TID2013", n_refs=5)
    trained, tested = [], []

    def recording_epoch(model, loader, optimizer, scaler, run, epoch, **kwargs):
        trained.append({s.content_id for s in loader.dataset.samples})
        return {"loss": 0.0, "train_srcc": float("nan"), "samples_per_s": 0.0, "data_share": 0.0}

    def scripted_evaluate(model, test_sets, *args, **kwargs):
        (test_set,) = test_sets
        tested.append({s.content_id for s in test_set.loader.dataset.samples})
        metrics = {**ROUND_METRICS[len(tested) - 1], "rmse": 1.0}
        return {test_set.name: {**metrics, "pred": np.zeros(2), "label": np.zeros(2), "images": 2, "seconds": 1.0}}

    monkeypatch.setattr(engine, "train_one_epoch", recording_epoch)
    monkeypatch.setattr(engine, "evaluate", scripted_evaluate)
    monkeypatch.setattr(engine.files, "atomic_torch_save", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    args = set_args(["--train_dataset", "tid2013", "--test_dataset", "tid2013", "--train_test_num", "3",
                     "--epochs", "1", "--patch_size", "8", "--self_patch_num", "2", "--distillation_layer", "4",
                     "--pretrained", "false", "--gpu_ids", "cpu", "--num_workers", "0", "--checkpoint_dir", "run"])
    report = train_DistillationIQA_FR.main(args)

    assert len(trained) == len(tested) == 3
    for train_ids, test_ids in zip(trained, tested):
        assert not train_ids & test_ids  # no content on both sides
        assert train_ids | test_ids == set(range(5)) and len(test_ids) == 1  # 80/20 of 5 contents
    assert len({frozenset(t) for t in tested}) > 1  # each round draws its own split
    median = {k: statistics.median(m[k] for m in ROUND_METRICS) for k in ("srcc", "plcc", "krcc")}
    assert report["median"]["tid2013"] == pytest.approx(median)
    assert median["srcc"] != pytest.approx(statistics.mean(m["srcc"] for m in ROUND_METRICS))
    summary = json.loads((tmp_path / "run" / "results" / "summary.json").read_text())
    assert summary["median"]["tid2013"] == pytest.approx(median)
