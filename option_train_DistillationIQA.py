"""Options of the NAR-student training (`train_DistillationIQA.py`) and of both test scripts."""

from __future__ import annotations

import argparse

from tools.options import (
    NO_EFFECT_IN_TESTING,
    add_data_args,
    add_network_args,
    add_runtime_args,
    add_training_args,
    check_args,
    finalize_args,
    str2bool,
)

__all__ = ["check_args", "get_args_parser", "set_args", "str2bool"]

STUDENT_TEST_DATASETS = "live,csiq,tid2013,koniq-10k"


def get_args_parser(script: str = "train") -> argparse.ArgumentParser:
    """Options for `script` = 'train' (student training), 'test' (test_DistillationIQA.py) or 'single'.

    The test scripts accept every option of the original's student parser (the original tests parsed it), so
    command lines written for the original run unchanged; those without effect in testing say so in --help.
    """
    descriptions = {
        "train": "Train the CVRKD-IQA NAR-student with the frozen FR-teacher (knowledge distillation).",
        "test": "Evaluate a NAR-student (and optionally the FR-teacher) on test datasets, 10 rounds.",
        "single": "Score images with the NAR-student against non-aligned reference image(s).",
    }
    if script not in descriptions:
        raise ValueError(f"script must be one of {sorted(descriptions)}")
    parser = argparse.ArgumentParser(description=descriptions[script])
    testing = script != "train"
    add_training_args(parser, checkpoint_dir="./checkpoint_DistillationIQA/", update_opt_epoch=30, lr_ratio=1,
                      testing=testing)
    parser.add_argument("--distillation_loss", choices=["mse", "l1", "kldiv"], default="mse",
                        help="feature distance for KD (the original computed mse whatever this said)"
                        + (f"; {NO_EFFECT_IN_TESTING}" if testing else ""))
    if not testing:
        parser.add_argument("--feature_loss_ratio", type=float, default=1.0, help="weight of the KD feature loss")
        parser.add_argument("--distill_all_diff_features", action="store_true",
                            help="distil every difference feature that --distillation_layer selects (not in the "
                                 "original, whose zip with the LQ features kept only the first n = min(d, 11) "
                                 "at MLP depth 9: blocks 0-10 at the default d=18)")
    if script != "single":
        add_data_args(parser, test_datasets=STUDENT_TEST_DATASETS, teacher_evaluation=testing)
    add_network_args(parser, testing=testing)
    add_runtime_args(parser, testing=testing)
    parser.add_argument("--teacherNet_model_path", type=str,
                        default=None if testing else "./model_zoo/FR_teacher_cross_dataset.pth",
                        help=("FR-teacher weights (tested too when given)" if script == "test" else
                              f"FR-teacher weights; {NO_EFFECT_IN_TESTING}" if testing else "FR-teacher weights"))
    parser.add_argument("--studentNet_model_path", type=str,
                        default="./model_zoo/NAR_student_cross_dataset.pth" if testing else None,
                        help="NAR-student weights" + ("" if testing else " to start from"))
    if script == "test":
        parser.add_argument("--test_rounds", type=int, default=10,
                            help="rounds with new random crops and references")
        parser.add_argument("--checkpoint_dir", type=str, default="./checkpoint_DistillationIQA/",
                            help="results/<...>.csv is written below it")
        parser.add_argument("--setting_file", type=str, default="setting_test.txt")
        parser.add_argument("--plot", type=str, default=None, metavar="DIR",
                            help="write per-dataset scatter plots (prediction vs label, fitted logistic) here")
        parser.add_argument("--tsne", type=str, default=None, metavar="DIR",
                            help="write per-dataset t-SNE maps of the student's HQ-LQ difference features here "
                                 "(needs scikit-learn)")
        parser.add_argument("--tsne_compare", type=str, default=None, metavar="PATH",
                            help="a second student checkpoint (e.g. trained without KD) drawn beside the first "
                                 "in the --tsne maps")
    if script == "single":
        parser.add_argument("--lq", nargs="+", required=True, metavar="PATH",
                            help="image(s) to score, or a folder of images")
        parser.add_argument("--ref", nargs="+", default=None, metavar="PATH",
                            help="non-aligned HQ reference image(s) or a folder "
                                 "(default <dataset_dir>/DIV2K_ref/val_HR)")
        parser.add_argument("--dataset_dir", type=str, default="./dataset")
        parser.add_argument("--repeats", type=int, default=10,
                            help="random crop sets per image; the score is their mean")
        parser.add_argument("--test_batch_size", type=int, default=8,
                            help="images scored together (scores do not depend on it)")
        parser.add_argument("--upscale_small_images", action="store_true",
                            help="upscale images smaller than the patch size instead of refusing them")
        parser.add_argument("--output", type=str, default=None, metavar="FILE.csv|FILE.json",
                            help="also write the scores to this CSV or JSON file")
        parser.add_argument("--figure", type=str, default=None, metavar="FILE.png",
                            help="draw the scored images annotated with their scores: one row per --lq folder "
                                 "(loose files form one more row)")
        original = parser.add_argument_group("options of the original's parser without effect here")
        original.add_argument("--test_patch_num", type=int, default=1,
                              help=f"see --repeats; {NO_EFFECT_IN_TESTING}")
        original.add_argument("--use_fitting_prcc_srcc", type=str2bool, default=True, help=NO_EFFECT_IN_TESTING)
        original.add_argument("--checkpoint_dir", type=str, default="./checkpoint_DistillationIQA/",
                              help=NO_EFFECT_IN_TESTING)
        original.add_argument("--setting_file", type=str, default="setting.txt", help=NO_EFFECT_IN_TESTING)
    return parser


def set_args(argv: list[str] | None = None, script: str = "train") -> argparse.Namespace:
    """Parse the command line (or `argv`) and derive the checkpoint paths; creates nothing."""
    return finalize_args(get_args_parser(script).parse_args(argv))


if __name__ == "__main__":
    print(set_args())
