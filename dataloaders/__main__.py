"""Command line of the dataloaders package: `python -m dataloaders check --dataset NAME --root PATH`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.errors import run_cli
from dataloaders.check import run_check
from dataloaders.loaders import DATASET_NAMES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m dataloaders", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check a dataset on disk: counts, labels, missing/unreadable files")
    add = check.add_argument
    add("--dataset", required=True, choices=DATASET_NAMES, help="dataset name")
    add("--root", required=True, help="dataset folder, e.g. ./dataset/kadid10k")
    add("--ref_root", default=None, help="also check a non-aligned reference folder (DIV2K HR)")
    add("--patch_size", type=int, default=224, help="report images smaller than this (default 224)")
    add("--upscale", "--upscale_small_images", dest="upscale", action="store_true",
        help="small images will be upscaled (the scripts' --upscale_small_images): do not report them")
    add("--quick", action="store_true", help="read image headers only, do not decode every image")
    add("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    return run_check(args.dataset, args.root, args.ref_root, patch_size=args.patch_size, upscale=args.upscale,
                     quick=args.quick, as_json=args.json)


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
