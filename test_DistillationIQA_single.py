"""Score one image, several images or a folder with the NAR-student against non-aligned HQ reference(s).

    python test_DistillationIQA_single.py --lq photo.jpg --ref dataset/DIV2K_ref/val_HR/0801.png
    python test_DistillationIQA_single.py --lq my_folder/ --output scores.csv
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dataloaders import DEFAULT_DIRS
from option_train_DistillationIQA import set_args
from tools.checkpoint import write_scores
from tools.errors import run_cli
from tools.scorer import IQAScorer, expand_image_paths
from tools.utils import resolve_precision, seed_everything, select_device


def figure_rows(items: list[str], scores: dict[str, float]) -> list[tuple[str, list[tuple[Path, str]]]]:
    """One row per --lq folder (titled by its name) and one row for the loose files, each image with its score."""
    rows, loose = [], []
    for item in items:
        tiles = [(path, f"{path.stem}\nscore {scores[str(path)]:.3f}") for path in expand_image_paths([item], "--lq")]
        if Path(item).is_dir():
            rows.append((Path(item).name, tiles))
        else:
            loose += tiles
    return rows + ([("images", loose)] if loose else [])


def main(args: argparse.Namespace) -> list[dict]:
    seed_everything(args.seed)
    device = select_device(args.gpu_ids)
    lq_paths = expand_image_paths(args.lq, "--lq")
    refs = expand_image_paths(args.ref or [Path(args.dataset_dir) / DEFAULT_DIRS["ref_test"]], "--ref")
    precision = resolve_precision(args.amp, device)
    scorer = IQAScorer(args.studentNet_model_path, refs, self_patch_num=args.self_patch_num,
                       patch_size=args.patch_size, repeats=args.repeats, seed=args.seed,
                       batch_size=args.batch_size, device=device, distillation_layer=args.distillation_layer,
                       upscale=args.upscale_small_images, autocast_dtype=precision.dtype)
    scores = scorer.score(lq_paths)
    rows = [{"image": str(path), "score": float(score)} for path, score in zip(lq_paths, scores)]
    width = max(len(r["image"]) for r in rows)
    for row in rows:
        print(f"{row['image']:<{width}}  {row['score']:.4f}")
    if args.output:
        write_scores(args.output, rows)
        print(f"scores written to {os.path.abspath(args.output)}")
    if args.figure:
        from tools.visuals import examples_figure

        by_path = {row["image"]: row["score"] for row in rows}
        path = examples_figure(figure_rows(args.lq, by_path), args.figure,
                               title="NAR-student scores (higher = better quality)")
        print(f"figure written to {os.path.abspath(path)}")
    return rows


if __name__ == "__main__":
    run_cli(lambda: main(set_args(script="single")))
