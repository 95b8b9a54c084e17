"""Options of the NAR-student training (`train_DistillationIQA.py`) and of both test scripts: one parser per
script, each composed of the named groups of `tools/options.py`.

The test scripts accept every option of the original's student parser (the original tests parsed it), so command
lines written for the original run unchanged; those without effect in testing sit in one group that says so.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tools.options import (
    AMP,
    DISTILLATION_LAYER,
    DISTILLATION_LOSS,
    NO_EFFECT_IN_TESTING,
    SETTING_FILE,
    TEST_DATASET,
    TEST_PATCH_NUM,
    TRAIN_DATASET,
    USE_FITTING,
    Option,
    add_compatibility_group,
    add_data_group,
    add_distillation_group,
    add_evaluation_group,
    add_network_group,
    add_runtime_group,
    add_scoring_group,
    add_training_group,
    add_weights_group,
    check_args,
    option,
    original_training_options,
    parse,
    str2bool,
)

__all__ = ["check_args", "get_args_parser", "get_single_args_parser", "get_test_args_parser", "set_args",
           "set_single_args", "set_test_args", "str2bool"]

STUDENT_TEST_DATASETS = "live,csiq,tid2013,koniq-10k"
CHECKPOINT_DIR = "./checkpoint_DistillationIQA/"
UPDATE_OPT_EPOCH = 30
TEACHER_WEIGHTS = option("--teacherNet_model_path", type=str, default="./model_zoo/FR_teacher_cross_dataset.pth",
                         help="FR-teacher weights")
STUDENT_WEIGHTS = option("--studentNet_model_path", type=str, default="./model_zoo/NAR_student_cross_dataset.pth",
                         help="NAR-student weights")


def get_args_parser() -> argparse.ArgumentParser:
    """The student's training options (`train_DistillationIQA.py`)."""
    parser = argparse.ArgumentParser(
        description="Train the CVRKD-IQA NAR-student with the frozen FR-teacher (knowledge distillation).")
    add_training_group(parser, checkpoint_dir=CHECKPOINT_DIR, update_opt_epoch=UPDATE_OPT_EPOCH, lr_ratio=1)
    add_distillation_group(parser)
    add_data_group(parser, STUDENT_TEST_DATASETS, teacher_evaluation=False)
    add_network_group(parser)
    add_runtime_group(parser)
    add_weights_group(parser, TEACHER_WEIGHTS,
                      STUDENT_WEIGHTS.replace(default=None, help="NAR-student weights to start from"))
    return parser


def _unused_in_testing() -> tuple[Option, ...]:
    """The training options both test scripts accept without using them."""
    return (*original_training_options(UPDATE_OPT_EPOCH), DISTILLATION_LOSS, DISTILLATION_LAYER,
            AMP.replace(help="the precision of training; see --eval_amp"))


def get_test_args_parser() -> argparse.ArgumentParser:
    """The options of `test_DistillationIQA.py`."""
    parser = argparse.ArgumentParser(
        description="Evaluate a NAR-student (and optionally the FR-teacher) on test datasets, 10 rounds.")
    add_evaluation_group(parser, checkpoint_dir=CHECKPOINT_DIR)
    add_data_group(parser, STUDENT_TEST_DATASETS, teacher_evaluation=True)
    add_network_group(parser)
    add_runtime_group(parser)
    add_weights_group(parser, TEACHER_WEIGHTS.replace(default=None, help="FR-teacher weights (tested too when given)"),
                      STUDENT_WEIGHTS)
    add_compatibility_group(parser, *_unused_in_testing(), note=NO_EFFECT_IN_TESTING)
    return parser


def get_single_args_parser() -> argparse.ArgumentParser:
    """The options of `test_DistillationIQA_single.py`."""
    parser = argparse.ArgumentParser(
        description="Score images with the NAR-student against non-aligned reference image(s).")
    add_scoring_group(parser)
    add_network_group(parser)
    add_runtime_group(parser, torchrun=False)
    add_weights_group(parser, STUDENT_WEIGHTS)
    add_compatibility_group(
        parser, TRAIN_DATASET, TEST_DATASET.replace(default=None), *_unused_in_testing(),
        TEACHER_WEIGHTS.replace(default=None), TEST_PATCH_NUM.replace(help="see --repeats"), USE_FITTING,
        option("--checkpoint_dir", type=str, default=CHECKPOINT_DIR), SETTING_FILE, note=NO_EFFECT_IN_TESTING)
    return parser


def set_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the student's training command line (or `argv`) and derive the checkpoint paths; creates nothing."""
    return parse(get_args_parser(), argv)


def set_test_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of `test_DistillationIQA.py` (or `argv`); creates nothing."""
    return parse(get_test_args_parser(), argv)


def set_single_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of `test_DistillationIQA_single.py` (or `argv`); creates nothing."""
    return parse(get_single_args_parser(), argv)


if __name__ == "__main__":
    print(set_args())
