"""Score one image, several images or a folder with the NAR-student against non-aligned HQ reference(s).

    python test_DistillationIQA_single.py --lq photo.jpg --ref dataset/DIV2K_ref/val_HR/0801.png
    python test_DistillationIQA_single.py --lq my_folder/ --output scores.csv
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.errors import UserError, run_cli
from common.files import refuse_inputs
from dataloaders import DEFAULT_DIRS
from option_train_DistillationIQA import set_single_args
from tools.checkpoint import check_figure_path, check_scores_path, write_scores
from tools.scorer import IQAScorer, check_student_checkpoint, expand_image_paths
from tools.utils import (
    configure_cuda,
    note_training_amp_in_testing,
    resolve_precision,
    seed_everything,
    select_device,
    use_device,
)


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
    configure_cuda(args.deterministic)
    device = select_device(args.gpu_ids)
    use_device(device)
    check_student_checkpoint(args.studentNet_model_path)  # first: says where a checkpoint comes from
    if args.output:
        check_scores_path(args.output)  # before any scoring
    if args.figure:
        check_figure_path(args.figure)
    lq_paths = expand_image_paths(args.lq, "--lq")
    refs = expand_image_paths(args.ref or [Path(args.dataset_dir) / DEFAULT_DIRS["ref_test"]], "--ref")
    inputs = [*lq_paths, *refs, args.studentNet_model_path]
    for option, path in (("--output", args.output), ("--figure", args.figure)):
        if path:
            refuse_inputs(path, option, inputs)
    if args.output and args.figure and os.path.abspath(args.output) == os.path.abspath(args.figure):
        raise UserError(f"--output and --figure name the same file {args.figure}: give two file names")
    note_training_amp_in_testing(args.amp, args.eval_amp)
    precision = resolve_precision(args.eval_amp, device)  # fp32 unless --eval_amp asks otherwise
    scorer = IQAScorer(args.studentNet_model_path, refs, self_patch_num=args.self_patch_num,
                       patch_size=args.patch_size, repeats=args.repeats, seed=args.seed,
                       batch_size=args.test_batch_size, device=device,
                       upscale=args.upscale_small_images, autocast_dtype=precision.dtype)
    if args.print_netC:
        print(scorer.net)
    scores, failures = scorer.try_score(lq_paths)  # one bad image does not stop the others
    rows = [{"image": str(path), "score": float(score)}
            for i, (path, score) in enumerate(zip(lq_paths, scores)) if i not in failures]
    width = max((len(r["image"]) for r in rows), default=0)
    for row in rows:
        print(f"{row['image']:<{width}}  {row['score']:.4f}")
    if args.output and rows:
        write_scores(args.output, rows)
        print(f"scores written to {os.path.abspath(args.output)}")
    if args.figure:
        from tools.visuals import examples_figure

        by_path = {row["image"]: row["score"] for row in rows}
        path = examples_figure(figure_rows(args.lq, by_path), args.figure,
                               title="NAR-student scores (higher = better quality)")
        print(f"figure written to {os.path.abspath(path)}")
    if failures:
        print(f"not scored ({len(failures)}):", file=sys.stderr)
        for i in sorted(failures):
            print(f"  {failures[i]}", file=sys.stderr)
        raise UserError(f"{len(failures)} of {len(lq_paths)} image(s) could not be scored (listed above)")
    return rows


if __name__ == "__main__":
    run_cli(lambda: main(set_single_args()))
