"""Options of the FR-teacher training (`train_DistillationIQA_FR.py`)."""

from __future__ import annotations

import argparse

from tools.options import (
    add_data_args,
    add_network_args,
    add_runtime_args,
    add_training_args,
    check_args,
    finalize_args,
    str2bool,
)

__all__ = ["check_args", "get_args_parser", "set_args", "str2bool"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the CVRKD-IQA FR-teacher (LQ + pixel-aligned HQ).")
    add_training_args(parser, checkpoint_dir="./checkpoint_FRIQA_teacher/", update_opt_epoch=300, lr_ratio=10)
    add_data_args(parser, test_datasets="live,csiq,tid2013")
    add_network_args(parser)
    add_runtime_args(parser)
    parser.add_argument("--ref_folder_paths", type=str, default="./dataset/DIV2K_ref.tar.gz",
                        help="kept from the original for compatibility; nothing reads it")
    parser.add_argument("--teacherNet_model_path", type=str, default=None,
                        help="start from these teacher weights (e.g. ./model_zoo/FR_teacher_cross_dataset.pth)")
    return parser


def set_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (or `argv`) and derive the checkpoint paths; creates nothing."""
    return finalize_args(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    print(set_args())
