"""The data of a run: the training loader and the test sets, from explicit settings."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.errors import UserError
from common.log import get_logger
from dataloaders import build_dataset, build_loader, dataset_class, list_reference_images
from dataloaders.ref_cache import ReferenceCache
from tools.epoch import TestSet


def data_options(args: argparse.Namespace) -> dict:
    """The settings of a parsed command line that `build_test_sets` and `build_train_loader` share."""
    return {"dataset_paths": args.dataset_paths, "patch_size": args.patch_size, "patch_num": args.self_patch_num,
            "seed": args.seed, "upscale": args.upscale_small_images, "num_workers": args.num_workers}


def dataset_root(dataset_paths: Mapping[str, str | os.PathLike], name: str, option: str) -> Path:
    """The root of dataset `name`; a `UserError` naming `option` when it is not on disk."""
    root = Path(dataset_paths[name])
    if not root.exists():
        raise UserError(f"{option} {name}: not found at {root} "
                        f"(set --dataset_dir or --{name.replace('-', '')}_path; see dataset/README.md)")
    return root


def build_train_loader(name: str, mode: str, *, dataset_paths: Mapping[str, str | os.PathLike], patch_size: int,
                       patch_num: int, seed: int, batch_size: int, world_size: int = 1, repeats: int = 1,
                       upscale: bool = False, num_workers: int = 0, ref_folder: str | os.PathLike | None = None,
                       content_ids: Sequence[int] | None = None, ref_cache: ReferenceCache | None = None,
                       pin_memory: bool = False):
    """The shuffled training loader of dataset `name` (this process's share of `batch_size`); `pin_memory` for a
    CUDA run."""
    if batch_size % world_size:
        raise UserError(f"--batch_size {batch_size} must be divisible by the {world_size} processes")
    ref_paths = list_reference_images(ref_folder) if mode == "lq_hq_ref" else None
    dataset = build_dataset(name, dataset_root(dataset_paths, name, "--train_dataset"), mode, patch_size=patch_size,
                            patch_num=patch_num, train=True, content_ids=content_ids, ref_paths=ref_paths,
                            seed=seed, repeats=repeats, upscale=upscale, ref_cache=ref_cache)
    return build_loader(dataset, batch_size // world_size, shuffle=True, seed=seed, num_workers=num_workers,
                        pin_memory=pin_memory)


def build_test_sets(names: Sequence[str], mode: str, *, dataset_paths: Mapping[str, str | os.PathLike],
                    patch_size: int, patch_num: int, seed: int, batch_size: int, repeats: int = 1,
                    upscale: bool = False, num_workers: int = 0, augment_teacher: bool = True,
                    ref_folder: str | os.PathLike | None = None, content_ids: Sequence[int] | None = None,
                    ref_cache: ReferenceCache | None = None, pin_memory: bool = False,
                    shard: tuple[int, int] = (0, 1)) -> list[TestSet]:
    """Test loaders for the datasets that are on disk; missing ones are skipped with a warning naming the path.

    The teacher ('lq_hq') cannot be evaluated on authentic datasets: those are skipped with a warning. Its
    patch pairs get the paired random flips and 180-degree rotation, as the original evaluated it, unless
    `augment_teacher` is false (--teacher_test_augment false). The student ('lq_hq_ref') draws its references
    from `ref_folder`; reference images go into `ref_cache` when given. `shard` = (rank, world size): each
    process of a torchrun loads its share of the batches (`predict` gathers the predictions); `pin_memory` for a
    CUDA run.
    """
    logger = get_logger()
    ref_paths = list_reference_images(ref_folder) if mode == "lq_hq_ref" else None
    test_sets = []
    for name in names:
        root = Path(dataset_paths[name])
        if not root.exists():
            logger.warning(f"warning: test dataset {name} not found at {root}: skipped")
            continue
        if mode == "lq_hq" and not dataset_class(name).has_aligned_reference:
            logger.warning(f"warning: {name} has no aligned references: the FR-teacher is not evaluated on it")
            continue
        dataset = build_dataset(name, root, mode, patch_size=patch_size, patch_num=patch_num, train=False,
                                content_ids=content_ids, ref_paths=ref_paths, seed=seed, repeats=repeats,
                                upscale=upscale, augment_eval=mode == "lq_hq" and augment_teacher,
                                ref_cache=ref_cache)
        loader = build_loader(dataset, batch_size, shuffle=False, seed=seed, num_workers=num_workers,
                              pin_memory=pin_memory, shard=shard)
        test_sets.append(TestSet(name, loader, dataset.higher_is_better))
    return test_sets
