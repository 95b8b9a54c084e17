"""Samples per second of the student's training loader (LQ + aligned HQ + non-aligned 2K reference).

Generates a KADID-format dataset (512x384 PNGs) and a pool of DIV2K-sized (2040x1356) photo-like PNG
references in a temporary folder, then times `build_loader` with 0 and 2 workers and breaks one
sample down into its steps. Run: `python benchmarks/bench_loader.py [--samples 64] [--workers 0,2]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataloaders as dl  # noqa: E402
from dataloaders.sampling import independent_patches, paired_patches, to_normalized_tensor  # noqa: E402
from tests.dataset_fixtures import make_kadid  # noqa: E402


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image with smooth structure plus sensor-like noise: compresses (and decodes) like a photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = Image.fromarray(rng.integers(0, 256, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = smooth + rng.normal(0.0, 4.0, smooth.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def build_data(root: Path, n_refs: int, ref_size: tuple[int, int]) -> tuple[dl.IQADataset, list[Path]]:
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
    return dl.build_dataset("kadid10k", root / "kadid10k", "lq_hq_ref", train=True, ref_paths=refs), refs


def time_loader(ds: dl.IQADataset, batch_size: int, workers: int, samples: int) -> tuple[float, float]:
    """(seconds to the first batch, samples per second after it) over at least `samples` samples."""
    loader = dl.build_loader(ds, batch_size, shuffle=True, seed=0, num_workers=workers, drop_last=True)
    start, first, seen, epoch = time.perf_counter(), None, 0, 0
    while seen < samples + batch_size:
        dl.set_loader_epoch(loader, epoch)
        for batch in loader:
            if first is None:
                first = time.perf_counter()
            else:
                seen += batch["lq"].shape[0]
            if seen >= samples:
                break
        epoch += 1
        if seen >= samples:
            break
    end = time.perf_counter()
    del loader
    return first - start, seen / (end - first)


def mean_ms(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def breakdown(ds: dl.IQADataset, refs: list[Path], batch_size: int, reps: int) -> list[tuple[str, float]]:
    """Milliseconds per sample of each step of one student training sample."""
    s, p = ds.patch_size, ds.patch_num
    sample = ds.samples[0]
    rng = np.random.default_rng(0)
    ref_img = dl.load_rgb(refs[0])
    ref_arr, lq_arr = np.asarray(ref_img), np.asarray(dl.load_rgb(sample.lq_path))
    hq_arr = np.asarray(dl.load_rgb(sample.hq_path))
    lq_p, hq_p = paired_patches(lq_arr, hq_arr, rng, s, p, augment=False)
    items = [ds[(i % len(ds), 0)] for i in range(batch_size)]
    ref_p = independent_patches(ref_arr, rng, s, p, flip=True, rotate=True)
    return [
        ("decode 2K reference PNG (load_rgb)", mean_ms(lambda: dl.load_rgb(refs[0]), reps)),
        ("PIL -> numpy of the 2K reference", mean_ms(lambda: np.asarray(ref_img), reps)),
        ("decode LQ + HQ 512x384 PNGs",
         mean_ms(lambda: (dl.load_rgb(sample.lq_path), dl.load_rgb(sample.hq_path)), reps)),
        (f"{p} paired LQ/HQ crops", mean_ms(lambda: paired_patches(lq_arr, hq_arr, rng, s, p, False), reps)),
        (f"{p} reference crops + flips", mean_ms(lambda: independent_patches(ref_arr, rng, s, p, flip=True),
                                                 reps)),
        (f"{p} reference crops + flips + rotation",
         mean_ms(lambda: independent_patches(ref_arr, rng, s, p, flip=True, rotate=True), reps)),
        ("to tensor + normalise (3 x [p,3,s,s])",
         mean_ms(lambda: [to_normalized_tensor(x) for x in (lq_p, hq_p, ref_p)], reps)),
        ("whole __getitem__", mean_ms(lambda: ds[(0, 0)], reps)),
        ("batch collate, per sample (copy ~18 MB into the batch)",
         mean_ms(lambda: default_collate(items), reps) / len(items)),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="timed samples per configuration")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--refs", type=int, default=4, help="number of 2K reference images")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per step of the breakdown")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds, refs = build_data(Path(tmp), args.refs, (2040, 1356))
        size_mb = sum(p.stat().st_size for p in refs) / len(refs) / 2**20
        print(f"generated {len(ds)} LQ/HQ pairs and {len(refs)} references of 2040x1356 "
              f"({size_mb:.1f} MB each) in {time.perf_counter() - t0:.1f} s; patch {ds.patch_size}, "
              f"{ds.patch_num} patches, batch {args.batch_size}\n")
        print("| workers | first batch (s) | samples/s |\n|---:|---:|---:|")
        for workers in (int(w) for w in args.workers.split(",")):
            first, rate = time_loader(ds, args.batch_size, workers, args.samples)
            print(f"| {workers} | {first:.2f} | {rate:.1f} |")
        print("\n| step of one sample (1 process) | ms |\n|---|---:|")
        for name, ms in breakdown(ds, refs, args.batch_size, args.reps):
            print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
