"""Options shared by the teacher, student and test scripts (the option modules only set their defaults).

Parsing has no side effects: folders are created and the options file written by `check_args`.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from common.errors import UserError
from dataloaders import DATASET_NAMES, DEFAULT_DIRS

DATASET_HELP = "|".join(DATASET_NAMES)
DATASET_PATH_OPTIONS = {name: name.replace("-", "") + "_path" for name in DATASET_NAMES}  # koniq-10k -> koniq10k_path


def str2bool(value: str) -> bool:
    """The original's boolean option parser: yes/true/t/y/1 and no/false/f/n/0."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def pretrained_value(value: str) -> bool | str:
    """`--pretrained false|true|PATH`."""
    lowered = value.lower()
    if lowered in ("true", "yes", "1", "imagenet"):
        return True
    if lowered in ("false", "no", "0", "none"):
        return False
    return value


def dataset_list(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in DATASET_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown dataset(s) {', '.join(unknown)}; supported: {DATASET_HELP}")
    return names


def dataset_name(value: str) -> str:
    return dataset_list(value)[0] if value else value


NO_EFFECT_IN_TESTING = "accepted so that command lines written for the original run unchanged; no effect in testing"


def add_network_args(parser: argparse.ArgumentParser, *, testing: bool = False) -> None:
    group = parser.add_argument_group("network")
    group.add_argument("--self_patch_num", type=int, default=10, help="number of training & testing image self patches")
    group.add_argument("--patch_size", type=int, default=224, help="crop size for training & testing image patches")
    group.add_argument("--distillation_layer", type=int, default=18,
                       help="last xth layers of HQ-MLP for distillation (the KD distils the first n of them, "
                            "n = min(this, LQ-MLP depth + 2): see --distill_all_diff_features)"
                       + (f"; {NO_EFFECT_IN_TESTING}" if testing else ""))
    group.add_argument("--pretrained", type=pretrained_value, default=True, metavar="false|true|PATH",
                       help="backbone weights: true = torchvision's ImageNet weights (cache or download), "
                            "false = random (no network), or a local ResNet-50 state-dict file")
    group.add_argument("--print_netC", type=str2bool, default=False, help="print the network")


def add_runtime_args(parser: argparse.ArgumentParser, *, testing: bool = False) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--gpu_ids", type=str, default="0",
                       help="GPU id to use; 'cpu', '-1' or '' selects the CPU (also used when no GPU exists)")
    group.add_argument("--seed", type=int, default=0, help="seed of every random choice (crops, references, init)")
    group.add_argument("--num_workers", type=int, default=4, help="data-loading worker processes")
    group.add_argument("--amp", choices=["auto", "off", "fp16", "bf16"], default="auto",
                       help=("no effect in testing (the precision of training); see --eval_amp" if testing else
                             "mixed precision of training: auto = fp16 on CUDA, off on CPU; bf16 also works on CPU"))
    group.add_argument("--eval_amp", choices=["off", "auto", "fp16", "bf16"], default="off",
                       help="mixed precision of evaluation: off = fp32, as the original evaluated (default); "
                            "auto = fp16 on CUDA, off on CPU; bf16 also works on CPU")


def add_data_args(parser: argparse.ArgumentParser, test_datasets: str, *, teacher_evaluation: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset_dir", type=str, default="./dataset",
                       help="folder holding the datasets in their default sub-folders")
    group.add_argument("--test_datasets", type=dataset_list, default=dataset_list(test_datasets),
                       help=f"comma list of datasets to evaluate on (default {test_datasets}); "
                            "missing ones are skipped with a warning")
    for name, option in DATASET_PATH_OPTIONS.items():
        group.add_argument(f"--{option}", type=str, default=None,
                           help=f"root of {name} (default <dataset_dir>/{DEFAULT_DIRS[name]})")
    group.add_argument("--ref_train_dataset_path", type=str, default=None,
                       help="non-aligned reference pool for training "
                            f"(default <dataset_dir>/{DEFAULT_DIRS['ref_train']})")
    group.add_argument("--ref_test_dataset_path", type=str, default=None,
                       help="non-aligned reference pool for testing "
                            f"(default <dataset_dir>/{DEFAULT_DIRS['ref_test']})")
    group.add_argument("--test_patch_num", type=int, default=1, help="number of sample patches from testing image")
    group.add_argument("--test_batch_size", type=int, default=8,
                       help="images per batch at evaluation (scores do not depend on it)")
    group.add_argument("--upscale_small_images", action="store_true",
                       help="upscale images smaller than the patch size instead of refusing them")
    group.add_argument("--use_fitting_prcc_srcc", type=str2bool, default=True,
                       help="fit the 4-parameter logistic before PLCC")
    if teacher_evaluation:
        group.add_argument("--teacher_test_augment", type=str2bool, default=True,
                           help="evaluate the FR-teacher on patch pairs with the paired random flips and 180-degree "
                                "rotation of training (seeded), as the original did (default true); false: plain "
                                "crops. The student is always evaluated on plain crops")
    group.add_argument("--ref_cache_gb", type=float, default=None, metavar="GB",
                       help="memory for decoded reference images, kept once and shared by the loader workers "
                            "(default: min(16, a quarter of the available memory), divided among the processes "
                            "of a torchrun on one machine; 0 = off: decode them per sample)")


def add_training_args(parser: argparse.ArgumentParser, *, checkpoint_dir: str, update_opt_epoch: int,
                      lr_ratio: float, testing: bool = False) -> None:
    """The training options. With `testing`, only the original's options (the original test scripts parsed
    the training parser), each marked as having no effect unless it does."""
    group = parser.add_argument_group("options of the original's training parser" if testing else "training")

    def add(name: str, *, original: bool = True, effect: str | None = None, **kwargs) -> None:
        if testing and not original:
            return
        if testing:
            kwargs["help"] = effect or (kwargs.get("help", "") + f" ({NO_EFFECT_IN_TESTING})").lstrip()
        group.add_argument(name, **kwargs)

    add("--train_dataset", type=dataset_name, default="kadid10k", help=f"support datasets: {DATASET_HELP}",
        effect="the training set of a checkpoint that does not store its options (the authors' files: kadid10k); "
               "its label direction orients the correlations. Checkpoints of this project know their own")
    add("--test_dataset", type=dataset_name, default=None if testing else "live",
        help="equal to --train_dataset: within-dataset protocol (80/20 content splits, "
             "--train_test_num rounds, median); otherwise cross-dataset on --test_datasets",
        effect="test on this dataset only (the original's option); default: the --test_datasets list")
    add("--train_patch_num", type=int, default=1, help="number of sample patches from training image")
    add("--lr", dest="lr", type=float, default=2e-5, help="learning rate")
    add("--lr_ratio", original=False, type=float, default=lr_ratio,
        help="lr multiplier of everything but the backbone (becomes 1 from epoch 22 on: after epoch t > 20)")
    add("--weight_decay", type=float, default=5e-4, help="weight decay")
    add("--batch_size", type=int, default=32, help="batch size")
    add("--epochs", type=int, default=100, help="epochs for training")
    add("--train_test_num", type=int, default=1, help="train-test times (within-dataset protocol)")
    add("--update_opt_epoch", type=int, default=update_opt_epoch,
        help="after epoch t the lr becomes lr / 10^(t // update_opt_epoch), compounding")
    add("--use_refHQ", type=str2bool, default=True, help="use the HQ reference (must stay true)")
    add("--freeze_backbone_bn", original=False, action="store_true",
        help="keep the backbone's BatchNorm in eval mode while training (not in the original; "
             "helps a randomly initialised backbone)")
    add("--net_print", type=int, default=2000, help="log the loss every N iterations")
    if not testing:  # the test script defines its own (it writes its results there)
        add("--setting_file", type=str, default="setting.txt")
        add("--checkpoint_dir", type=str, default=checkpoint_dir)
    add("--resume", original=False, nargs="?", const="last", default=None, metavar="PATH",
        help="continue from <checkpoint_dir>/models/last.pth (or the given checkpoint)")
    add("--overwrite", original=False, action="store_true",
        help="start afresh in a --checkpoint_dir that holds a run: delete that run's checkpoints, "
             "metrics and log first")


def finalize_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the paths derived from other options (no file-system side effects)."""
    dataset_dir = Path(getattr(args, "dataset_dir", "./dataset"))
    if hasattr(args, "live_path"):
        for name, option in DATASET_PATH_OPTIONS.items():
            if getattr(args, option) is None:
                setattr(args, option, str(dataset_dir / DEFAULT_DIRS[name]))
        args.dataset_paths = {name: getattr(args, option) for name, option in DATASET_PATH_OPTIONS.items()}
    for option, key in (("ref_train_dataset_path", "ref_train"), ("ref_test_dataset_path", "ref_test")):
        if hasattr(args, option) and getattr(args, option) is None:
            setattr(args, option, str(dataset_dir / DEFAULT_DIRS[key]))
    if hasattr(args, "checkpoint_dir"):
        args.model_checkpoint_dir = os.path.join(args.checkpoint_dir, "models")
        args.result_checkpoint_dir = os.path.join(args.checkpoint_dir, "results")
        args.log_checkpoint_dir = os.path.join(args.checkpoint_dir, "log")
        args.setting_file = os.path.join(args.checkpoint_dir, os.path.basename(args.setting_file))
    for option in ("self_patch_num", "patch_size", "batch_size", "epochs", "train_test_num", "update_opt_epoch",
                   "test_patch_num", "train_patch_num", "test_batch_size", "net_print", "test_rounds", "repeats",
                   "distillation_layer"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise UserError(f"--{option} must be at least 1, got {value}")
    for option in ("num_workers", "seed"):
        value = getattr(args, option, None)
        if value is not None and value < 0:
            raise UserError(f"--{option} must be 0 or more, got {value}")
    for option, least in (("lr", "above 0"), ("lr_ratio", "above 0"), ("weight_decay", "0 or more"),
                          ("feature_loss_ratio", "0 or more")):
        value = getattr(args, option, None)
        if value is not None and not (math.isfinite(value) and (value > 0 if least == "above 0" else value >= 0)):
            raise UserError(f"--{option} must be a finite number {least}, got {value}")
    if (getattr(args, "ref_cache_gb", None) or 0) < 0:
        raise UserError(f"--ref_cache_gb must be 0 (off) or more, got {args.ref_cache_gb}")
    if getattr(args, "use_refHQ", True) is False:
        raise UserError("--use_refHQ false is not supported: the network always compares with a reference")
    return args


def check_args(args: argparse.Namespace, rank: int = 0) -> argparse.Namespace:
    """Create the checkpoint folders and write the options file (rank 0 only), as the original did."""
    if rank != 0:
        return args
    for folder in (args.checkpoint_dir, args.model_checkpoint_dir, args.result_checkpoint_dir,
                   args.log_checkpoint_dir):
        if os.path.isfile(folder):
            raise UserError(f"--checkpoint_dir: {folder} is a file, expected a folder")
        os.makedirs(folder, exist_ok=True)
    lines = ["------------ Options -------------"]
    lines += [f"{key}: {value}" for key, value in vars(args).items()]
    lines.append("-------------- End ----------------")
    from common.files import atomic_write_text  # late import: keeps `--help` fast

    atomic_write_text(args.setting_file, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return args
