"""The data path: uint8 patches normalised on the device, and the shared reference cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import dataloaders as dl
import train_DistillationIQA
from common.errors import UserError
from dataloaders import ref_cache as rc
from dataloaders.sampling import IMAGENET_MEAN, IMAGENET_STD, normalize_patches, to_model_input
from models.DistillationIQA import DistillationIQANet
from option_train_DistillationIQA import set_args
from tools.dataset_fixtures import make_kadid, make_ref_pool, make_tid2013

S = 16
GB = 2**30
REF_BYTES = 80 * 96 * 3  # one pool image below, decoded


# ---- uint8 until the device ---------------------------------------------------------------------------------
def test_uint8_normalisation_is_within_1e6_of_exact_and_equals_the_float_path() -> None:
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256).reshape(1, 3, 1, 256)
    out = normalize_patches(values)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 1, 256)
    mean, std = np.array(IMAGENET_MEAN).reshape(3, 1, 1), np.array(IMAGENET_STD).reshape(3, 1, 1)
    exact = (np.arange(256.0).reshape(1, 1, 256) / 255.0 - mean) / std
    assert np.abs(out[0].double().numpy() - exact).max() <= 1e-6  # the bound the docstring states
    # ToTensor + Normalize, the original's pipeline, computed in float32
    tv = (values.float() / 255.0 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    assert (out - tv).abs().max().item() <= 1e-6
    # the float path the loader used before: numpy float32 multiply then add, the same bits
    scale = (1.0 / (255.0 * np.array(IMAGENET_STD))).astype(np.float32).reshape(1, 3, 1, 1)
    bias = (-np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)).astype(np.float32).reshape(1, 3, 1, 1)
    before = values.numpy().astype(np.float32)
    before *= scale
    before += bias
    np.testing.assert_array_equal(out.numpy(), before)


def test_model_input_normalises_uint8_and_only_moves_float() -> None:
    patches = torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8)
    moved = to_model_input(patches, "cpu")
    assert moved.dtype == torch.float32 and torch.equal(moved, normalize_patches(patches))
    already = torch.randn(2, 3, 4, 4)
    assert to_model_input(already, "cpu") is already


# ---- the reference cache ------------------------------------------------------------------------------------
@pytest.fixture()
def data(tmp_path: Path) -> tuple[Path, list[Path]]:
    make_kadid(tmp_path / "kadid", n_refs=3, n_types=1, n_levels=2)
    return tmp_path / "kadid", make_ref_pool(tmp_path / "pool", n=3, size=(96, 80))


def student(root: Path, pool: list[Path], cache: rc.ReferenceCache | None = None, **kw) -> dl.IQADataset:
    return dl.build_dataset("kadid10k", root, "lq_hq_ref", patch_size=S, patch_num=3, train=True, ref_paths=pool,
                            seed=2, repeats=4, ref_cache=cache, **kw)


def items(ds: dl.IQADataset, epochs: int = 2) -> list[dict]:
    return [ds[(i, e)] for e in range(epochs) for i in range(len(ds))]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in ("lq", "hq", "ref"):
            assert x[key].dtype == torch.uint8 and torch.equal(x[key], y[key])


def test_cache_gives_the_same_samples_bit_for_bit_and_is_really_read(data) -> None:
    root, pool = data
    cache = rc.ReferenceCache(1.0)
    plain, cached = student(root, pool), student(root, pool, cache)
    assert len(cache) == 3 + 3  # the 3 aligned references, then the 3 pool images
    assert cache.used_bytes == 3 * 64 * 48 * 3 + 3 * REF_BYTES
    expected = items(plain)
    assert {int(x["ref"][0, 2, S // 2, S // 2]) for x in expected} == {200, 201, 202}  # every pool image is drawn
    teacher = dl.build_dataset("kadid10k", root, "lq_hq", patch_size=S, patch_num=3, train=True, ref_cache=cache)
    assert len(cache) == 6  # the teacher's dataset reuses the aligned references already held
    for path in [*pool, *sorted(root.glob("images/I0?.png"))]:
        path.unlink()  # from now on only the cache holds the references
    assert_same(items(cached), expected)
    assert teacher[0]["hq"].shape == (3, 3, S, S)
    with pytest.raises(UserError, match="image not found"):
        plain[(0, 0)]


def test_cache_never_exceeds_its_budget(data) -> None:
    root, pool = data
    cache = rc.ReferenceCache(2.5 * REF_BYTES / GB)
    dl.build_dataset("kadid10k", root, "lq_hq_ref", patch_size=S, ref_paths=pool, ref_cache=cache, content_ids=[])
    assert len(cache) == 2 and cache.used_bytes == 2 * REF_BYTES <= cache.budget_bytes
    assert sum(block.numel() for block in cache._blocks) == cache.used_bytes
    again = student(root, pool, cache)  # what is left fits one aligned reference; the rest is decoded per sample
    assert len(cache) == 3 and cache.used_bytes == 2 * REF_BYTES + 64 * 48 * 3 <= cache.budget_bytes
    assert sum(block.numel() for block in cache._blocks) == cache.used_bytes
    assert_same(items(again), items(student(root, pool)))
    assert rc.build_reference_cache(0, num_workers=2) is None


def test_budget_defaults_and_shared_memory_cap(monkeypatch) -> None:
    monkeypatch.setattr(rc, "available_memory_bytes", lambda: 8 * GB)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert rc.default_budget_gb() == pytest.approx(2.0)  # a quarter of what is available
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert rc.default_budget_gb() == pytest.approx(0.5)  # split among the processes of one machine
    monkeypatch.setattr(rc, "available_memory_bytes", lambda: 1000 * GB)
    assert rc.default_budget_gb() == pytest.approx(16.0 / 4)
    monkeypatch.setattr(rc, "shared_memory_free_bytes", lambda: 2 * GB)
    cache = rc.ReferenceCache(10.0, shared=True)
    assert cache.budget_bytes == GB and "/dev/shm" in cache.describe()
    assert rc.ReferenceCache(10.0, shared=False).budget_bytes == 10 * GB


class Probe(Dataset):
    """Returns one byte of a cached image as the worker process sees it."""

    def __init__(self, cache: rc.ReferenceCache, key) -> None:
        self.cache, self.key = cache, key

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        return int(self.cache.get(self.key)[0, 0, 2])


@pytest.mark.parametrize("context, shared", [("fork", True), ("spawn", True), ("fork", False)])
def test_workers_map_the_parents_cache_without_a_copy(data, context: str, shared: bool) -> None:
    root, pool = data
    cache = rc.ReferenceCache(1.0, shared=shared)
    ds = dl.build_dataset("kadid10k", root, "lq_hq_ref", patch_size=S, ref_paths=pool, ref_cache=cache,
                          content_ids=[])
    key = ds._cache_key(pool[0], None)
    loader = DataLoader(Probe(cache, key), batch_size=None, num_workers=1, persistent_workers=True,
                        multiprocessing_context=context)
    assert list(loader) == [200]
    cache._blocks[0].numpy()[2] = 77  # the parent writes after the worker started and read
    # shared memory: the worker sees the parent's page; private memory (forked copy-on-write): it does not
    assert list(loader) == ([77] if shared else [200])


def test_loader_workers_give_the_same_batches_from_a_shared_cache(data) -> None:
    root, pool = data
    plain = dl.build_loader(student(root, pool), 4, shuffle=True, seed=2)
    cached = dl.build_loader(student(root, pool, rc.ReferenceCache(1.0, shared=True)), 4, shuffle=True, seed=2,
                             num_workers=2)
    for epoch in range(2):
        dl.set_loader_epoch(plain, epoch)
        dl.set_loader_epoch(cached, epoch)
        for a, b in zip(plain, cached, strict=True):
            assert torch.equal(a["index"], b["index"])
            assert all(torch.equal(a[k], b[k]) for k in ("lq", "hq", "ref"))


def test_trained_weights_identical_with_the_cache_on_and_off(tmp_path: Path, one_thread) -> None:
    data = tmp_path / "dataset"
    make_kadid(data / "kadid10k", n_refs=2, n_types=2, n_levels=1)
    make_tid2013(data / "TID2013", n_refs=2)
    make_ref_pool(data / "DIV2K_ref" / "train_HR", n=3)
    make_ref_pool(data / "DIV2K_ref" / "val_HR", n=2)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    torch.save(DistillationIQANet(self_patch_num=2, distillation_layer=4, pretrained=False).state_dict(), teacher)
    runs = {}
    for name, extra in (("off", ["--ref_cache_gb", "0", "--num_workers", "0"]),
                        ("on", ["--num_workers", "2"])):
        args = set_args(["--patch_size", "32", "--self_patch_num", "2", "--distillation_layer", "4",
                         "--pretrained", "false", "--gpu_ids", "cpu", "--seed", "1", "--batch_size", "2",
                         "--epochs", "1", "--dataset_dir", str(data), "--test_datasets", "tid2013",
                         "--teacherNet_model_path", str(teacher), "--checkpoint_dir", str(tmp_path / name), *extra])
        train_DistillationIQA.main(args)
        runs[name] = tmp_path / name
    log = (runs["on"] / "log" / "log.txt").read_text()
    assert "reference cache: kadid10k (training, lq_hq_ref): 5 images cached" in log  # 2 aligned + 3 pool
    assert "reference cache: off" in (runs["off"] / "log" / "log.txt").read_text()
    assert "reference cache: off" not in log
    assert "images/s" in log
    off, on = (torch.load(runs[n] / "models" / "last.pth", weights_only=True)["model"] for n in ("off", "on"))
    assert [k for k in off if not torch.equal(off[k], on[k])] == []
    rows = {n: next(csv.DictReader(open(runs[n] / "results" / "metrics.csv"))) for n in runs}
    assert rows["off"]["loss"] == rows["on"]["loss"] and rows["off"]["tid2013_srcc"] == rows["on"]["tid2013_srcc"]
    assert {"samples_per_s", "data_share"} <= set(rows["on"])
