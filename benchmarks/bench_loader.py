"""Samples per second and bytes per batch of the student's training loader (LQ + aligned HQ + 2K reference).

Generates a KADID-format dataset (512x384 PNGs) and a pool of DIV2K-sized (2040x1356) photo-like PNG
references in a temporary folder, then times `build_loader` with 0 and 2 workers along four paths:

  float          the path before the reference cache: every sample decodes its 2K reference, patches are
                 normalised to float32 in the loader (reproduced here: the uint8 items normalised with numpy,
                 as the loader did)
  float + cache  the same with the reference cache (non-aligned pool and aligned references)
  uint8 + cache  what the scripts do now: cached references, uint8 patches, normalised on the device
  uint8 + cache of the pool only   the aligned (KADID) references decoded per sample, to show what caching
                 them adds

and breaks one sample down into its steps. Run:
`python benchmarks/bench_loader.py [--samples 256] [--batch_size 32] [--workers 0,2] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloaders as dl  # noqa: E402
from dataloaders.ref_cache import ReferenceCache, default_budget_gb  # noqa: E402
from dataloaders.sampling import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    independent_patches,
    normalize_patches,
    paired_patches,
    to_model_input,
    to_uint8_tensor,
)
from tools.dataset_fixtures import make_kadid  # noqa: E402

IMAGE_KEYS = ("lq", "hq", "ref")


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image with smooth structure plus sensor-like noise: compresses (and decodes) like a photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = Image.fromarray(rng.integers(0, 256, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = smooth + rng.normal(0.0, 4.0, smooth.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def build_data(root: Path, n_refs: int, ref_size: tuple[int, int]) -> tuple[Path, list[Path]]:
    """A KADID-format dataset (2 contents x 4 distortions, 512x384) and `n_refs` 2K reference PNGs."""
    make_kadid(root / "kadid10k", n_refs=2, n_types=2, n_levels=2, size=(512, 384))
    for i, path in enumerate(sorted((root / "kadid10k/images").glob("*.png"))):
        photo_like((512, 384), seed=i).save(path)
    refs = []
    for i in range(n_refs):
        path = root / "DIV2K_ref/train_HR" / f"{i + 1:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo_like(ref_size, seed=1000 + i).save(path)
        refs.append(path)
    return root / "kadid10k", refs


def student_dataset(kadid: Path, refs: list[Path], repeats: int) -> dl.IQADataset:
    return dl.build_dataset("kadid10k", kadid, "lq_hq_ref", train=True, ref_paths=refs, repeats=repeats)


_SCALE = (1.0 / (255.0 * np.array(IMAGENET_STD))).astype(np.float32).reshape(1, 3, 1, 1)
_BIAS = (-np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)).astype(np.float32).reshape(1, 3, 1, 1)


class FloatPatches(Dataset):
    """The float path as it was: each item's patches normalised to float32 with numpy, inside the loader."""

    def __init__(self, dataset: dl.IQADataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def normalise(patches: torch.Tensor) -> torch.Tensor:
        x = patches.numpy().astype(np.float32)
        x *= _SCALE
        x += _BIAS
        return torch.from_numpy(x)

    def __getitem__(self, key):
        item = self.dataset[key]
        return {k: self.normalise(v) if k in IMAGE_KEYS else v for k, v in item.items()}


def attach_cache(ds: dl.IQADataset, workers: int, budget_gb: float, pool_only: bool = False) -> ReferenceCache:
    """A cache as the scripts build it (shared memory when there are workers), filled from `ds`."""
    cache = ReferenceCache(budget_gb, shared=workers > 0, threads=2)
    if pool_only:
        ds.reference_images = lambda: [(p, None) for p in ds.ref_paths]  # type: ignore[method-assign]
    ds.use_cache(cache)
    return cache


def time_loader(ds: Dataset, batch_size: int, workers: int, samples: int) -> tuple[float, float, int]:
    """(seconds to the first batch, samples/s after it over >= `samples` samples, bytes of one batch's tensors)."""
    loader = dl.build_loader(ds, batch_size, shuffle=True, seed=0, num_workers=workers, drop_last=True)
    start, first, seen, epoch, nbytes = time.perf_counter(), None, 0, 0, 0
    while seen < samples:
        dl.set_loader_epoch(loader, epoch)
        for batch in loader:
            if first is None:
                first = time.perf_counter()
                nbytes = sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor))
            else:
                seen += batch["lq"].shape[0]
            if seen >= samples:
                break
        epoch += 1
    end = time.perf_counter()
    del loader
    return first - start, seen / (end - first), nbytes


def mean_ms(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def breakdown(kadid: Path, refs: list[Path], batch_size: int, reps: int, budget_gb: float) -> list[tuple[str, float]]:
    """Milliseconds per sample of each step of one student training sample."""
    ds = student_dataset(kadid, refs, repeats=1)
    s, p = ds.patch_size, ds.patch_num
    sample = ds.samples[0]
    rng = np.random.default_rng(0)
    ref_img = dl.load_rgb(refs[0])
    ref_arr, lq_arr = np.asarray(ref_img), np.asarray(dl.load_rgb(sample.lq_path))
    hq_arr = np.asarray(dl.load_rgb(sample.hq_path))
    lq_p, hq_p = paired_patches(lq_arr, hq_arr, rng, s, p, augment=False)
    ref_p = independent_patches(ref_arr, rng, s, p, flip=True, rotate=True)
    uint8 = [to_uint8_tensor(x) for x in (lq_p, hq_p, ref_p)]
    float_items = [FloatPatches(ds)[(i % len(ds), 0)] for i in range(batch_size)]
    uint8_items = [ds[(i % len(ds), 0)] for i in range(batch_size)]
    uint8_batches = [default_collate([it[k] for it in uint8_items]) for k in IMAGE_KEYS]
    uncached = mean_ms(lambda: ds[(0, 0)], reps)
    attach_cache(ds, 0, budget_gb)
    key = ds._cache_key(refs[0], None)
    return [
        ("decode 2K reference PNG (load_rgb)", mean_ms(lambda: dl.load_rgb(refs[0]), reps)),
        ("read the 2K reference from the cache", mean_ms(lambda: ds.ref_cache.get(key), reps)),
        ("decode LQ 512x384 PNG", mean_ms(lambda: dl.load_rgb(sample.lq_path), reps)),
        ("decode aligned HQ 512x384 PNG (cached now)", mean_ms(lambda: dl.load_rgb(sample.hq_path), reps)),
        (f"{p} paired LQ/HQ crops", mean_ms(lambda: paired_patches(lq_arr, hq_arr, rng, s, p, False), reps)),
        (f"{p} reference crops + flips + rotation",
         mean_ms(lambda: independent_patches(ref_arr, rng, s, p, flip=True, rotate=True), reps)),
        ("to uint8 tensors [p,3,s,s] (3x)", mean_ms(lambda: [to_uint8_tensor(x) for x in (lq_p, hq_p, ref_p)], reps)),
        ("normalise to float32 on the CPU, numpy (3x; the float path)",
         mean_ms(lambda: [FloatPatches.normalise(x) for x in uint8], reps)),
        ("normalise to float32 on the CPU, torch (3x; now on the device)",
         mean_ms(lambda: [normalize_patches(x) for x in uint8], reps)),
        ("whole __getitem__, no cache", uncached),
        ("whole __getitem__, cache", mean_ms(lambda: ds[(0, 0)], reps)),
        ("collate, per sample, float32 items", mean_ms(lambda: default_collate(float_items), reps) / batch_size),
        ("collate, per sample, uint8 items", mean_ms(lambda: default_collate(uint8_items), reps) / batch_size),
        ("to_model_input on the CPU, per sample (normalising the 3 tensors of a uint8 batch)",
         mean_ms(lambda: [to_model_input(b, "cpu") for b in uint8_batches], reps) / batch_size),
    ]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="timed samples per configuration")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--refs", type=int, default=4, help="number of 2K reference images")
    parser.add_argument("--repeats", type=int, default=8, help="each of the 8 LQ images appears this often")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per step of the breakdown")
    parser.add_argument("--cache_gb", type=float, default=None, help="cache budget (default: the scripts' default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default torch's; 1 on a shared CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = default_budget_gb() if args.cache_gb is None else args.cache_gb
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        kadid, refs = build_data(Path(tmp), args.refs, (2040, 1356))
        size_mb = sum(p.stat().st_size for p in refs) / len(refs) / 2**20
        print(f"{cpu_name()}; generated 8 LQ/HQ pairs (x{args.repeats}) and {len(refs)} references of 2040x1356 "
              f"({size_mb:.1f} MB each) in {time.perf_counter() - t0:.1f} s; patch 224, 10 patches, "
              f"batch {args.batch_size}, cache budget {budget:.1f} GB\n")
        paths = [("float (before)", False, False, False), ("float + cache", True, False, False),
                 ("uint8 + cache of the pool only", True, True, True), ("uint8 + cache", True, True, False)]
        print("| path | workers | first batch (s) | samples/s | vs. float, same workers | MB per batch |\n"
              "|---|---:|---:|---:|---:|---:|")
        for workers in (int(w) for w in args.workers.split(",")):
            base = None
            for name, cached, uint8, pool_only in paths:
                ds = student_dataset(kadid, refs, args.repeats)
                if cached:
                    attach_cache(ds, workers, budget, pool_only)
                first, rate, nbytes = time_loader(ds if uint8 else FloatPatches(ds), args.batch_size, workers,
                                                  args.samples)
                base = base or rate
                print(f"| {name} | {workers} | {first:.2f} | {rate:.1f} | {rate / base:.2f}x | {nbytes / 1e6:.0f} |")
        print("\n| step of one sample (1 process) | ms |\n|---|---:|")
        for name, ms in breakdown(kadid, refs, min(args.batch_size, 8), args.reps, budget):
            print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
