"""Options of the FR-teacher training (`train_DistillationIQA_FR.py`), composed of the named groups of
`tools/options.py`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tools.options import (
    add_compatibility_group,
    add_data_group,
    add_network_group,
    add_runtime_group,
    add_training_group,
    add_weights_group,
    check_args,
    option,
    parse,
    str2bool,
)

__all__ = ["check_args", "get_args_parser", "set_args", "str2bool"]


def get_args_parser() -> argparse.ArgumentParser:
    """The teacher's training options."""
    parser = argparse.ArgumentParser(description="Train the CVRKD-IQA FR-teacher (LQ + pixel-aligned HQ).")
    add_training_group(parser, checkpoint_dir="./checkpoint_FRIQA_teacher/", update_opt_epoch=300, lr_ratio=10)
    add_data_group(parser, "live,csiq,tid2013", teacher_evaluation=True)
    add_network_group(parser)
    add_runtime_group(parser)
    add_weights_group(parser, option("--teacherNet_model_path", type=str, default=None,
                                     help="start from these teacher weights "
                                          "(e.g. ./model_zoo/FR_teacher_cross_dataset.pth)"))
    add_compatibility_group(parser, option("--ref_folder_paths", type=str, default="./dataset/DIV2K_ref.tar.gz",
                                           help="the original's reference archive; nothing reads it"), note=None)
    return parser


def set_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (or `argv`) and derive the checkpoint paths; creates nothing."""
    return parse(get_args_parser(), argv)


if __name__ == "__main__":
    print(set_args())
