"""Options shared by the teacher, student and test scripts, in named groups; each script's parser is composed of
these groups by the option modules (which set the script's defaults).

Parsing has no side effects: folders are created and the options file written by `check_args`.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from common.errors import UserError
from dataloaders import DATASET_NAMES, DEFAULT_DIRS
from models.distillation import DISTILLATION_LOSSES

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


def auto_or_int(value: str) -> str | int:
    """`auto` or a whole number (`--num_workers`, `--test_batch_size`); `finalize_args` resolves `auto`."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number, got {value!r}") from None


def dataset_list(value: str) -> list[str]:
    """`--test_datasets a,b`: the known dataset names of a comma list (an unknown one is an error)."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in DATASET_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown dataset(s) {', '.join(unknown)}; supported: {DATASET_HELP}")
    return names


def dataset_name(value: str) -> str:
    """`--train_dataset` / `--test_dataset`: one known dataset name (the first of a comma list); "" when the
    value names none (refused where a dataset is needed: see `finalize_args`)."""
    names = dataset_list(value)
    return names[0] if names else ""


NO_EFFECT_IN_TESTING = "no effect in testing"
COMPATIBILITY_TITLE = "options kept for compatibility with the original (no effect here)"
COMPATIBILITY_DESCRIPTION = "accepted so that existing command lines run unchanged"


class Option(NamedTuple):
    """One command-line option, defined once: its flag and the keywords of `add_argument`."""

    flag: str
    kwargs: dict[str, Any]

    def replace(self, **changes: Any) -> Option:
        """The same option with some keywords changed (a script's own default or help)."""
        return Option(self.flag, {**self.kwargs, **changes})


def option(flag: str, **kwargs: Any) -> Option:
    """`Option(flag, kwargs)`, written like `add_argument`."""
    return Option(flag, kwargs)


def add_group(parser: argparse.ArgumentParser, title: str, options: Iterable[Option],
              description: str | None = None) -> argparse._ArgumentGroup:
    """Add the argument group `title` holding `options`, in their order."""
    group = parser.add_argument_group(title, description)
    for opt in options:
        group.add_argument(opt.flag, **opt.kwargs)
    return group


# ---- options that more than one group or parser takes -------------------------------------------------
TRAIN_DATASET = option("--train_dataset", type=dataset_name, default="kadid10k",
                       help=f"support datasets: {DATASET_HELP}")
TEST_DATASET = option("--test_dataset", type=dataset_name, default="live",
                      help="equal to --train_dataset: within-dataset protocol (80/20 content splits, "
                           "--train_test_num rounds, median); otherwise cross-dataset on --test_datasets")
DISTILLATION_LAYER = option("--distillation_layer", type=int, default=18,
                            help="last xth layers of HQ-MLP for distillation (the KD distils the first n of them, "
                                 "n = min(this, LQ-MLP depth + 2): see --distill_all_diff_features)")
DISTILLATION_LOSS = option("--distillation_loss", choices=list(DISTILLATION_LOSSES), default="mse",
                           help="feature distance for KD (the original computed mse whatever this said)")
AMP = option("--amp", choices=["auto", "off", "fp16", "bf16"], default="auto",
             help="mixed precision of training: auto = fp16 on CUDA, off on CPU; bf16 also works on CPU")
DATASET_DIR = option("--dataset_dir", type=str, default="./dataset",
                     help="folder holding the datasets in their default sub-folders")
TEST_PATCH_NUM = option("--test_patch_num", type=int, default=1, help="number of sample patches from testing image")
TEST_BATCH_SIZE = option("--test_batch_size", type=auto_or_int, default="auto",
                         help="images per batch at evaluation (scores do not depend on it); "
                              "auto = 32 on CUDA, 8 on the CPU")
UPSCALE = option("--upscale_small_images", action="store_true",
                 help="upscale images smaller than the patch size instead of refusing them")
USE_FITTING = option("--use_fitting_prcc_srcc", type=str2bool, default=True,
                     help="fit the 4-parameter logistic before PLCC")
SETTING_FILE = option("--setting_file", type=str, default="setting.txt")


def original_training_options(update_opt_epoch: int) -> tuple[Option, ...]:
    """The options of the original's training parser that only training reads (the test scripts accept them)."""
    return (
        option("--train_patch_num", type=int, default=1, help="number of sample patches from training image"),
        option("--lr", dest="lr", type=float, default=2e-5, help="learning rate"),
        option("--weight_decay", type=float, default=5e-4, help="weight decay"),
        option("--batch_size", type=int, default=32, help="batch size"),
        option("--epochs", type=int, default=100, help="epochs for training"),
        option("--train_test_num", type=int, default=1, help="train-test times (within-dataset protocol)"),
        option("--update_opt_epoch", type=int, default=update_opt_epoch,
               help="after epoch t the lr becomes lr / 10^(t // update_opt_epoch), compounding"),
        option("--use_refHQ", type=str2bool, default=True, help="use the HQ reference (must stay true)"),
        option("--net_print", type=int, default=2000, help="log the loss every N iterations"),
    )


# ---- the named groups --------------------------------------------------------------------------------
def add_training_group(parser: argparse.ArgumentParser, *, checkpoint_dir: str, update_opt_epoch: int,
                       lr_ratio: float) -> None:
    """Training: data split, optimiser, schedule, precision, run folder and resume (the training scripts)."""
    add_group(parser, "training", (
        TRAIN_DATASET, TEST_DATASET, *original_training_options(update_opt_epoch),
        option("--lr_ratio", type=float, default=lr_ratio,
               help="lr multiplier of everything but the backbone (becomes 1 from epoch 22 on: after epoch t > 20)"),
        option("--freeze_backbone_bn", action="store_true",
               help="keep the backbone's BatchNorm in eval mode while training (not in the original; "
                    "helps a randomly initialised backbone)"),
        DISTILLATION_LAYER, AMP,
        option("--compile", action="store_true",
               help="compile the training network with torch.compile (first steps slower while it compiles)"),
        SETTING_FILE, option("--checkpoint_dir", type=str, default=checkpoint_dir),
        option("--resume", nargs="?", const="last", default=None, metavar="PATH",
               help="continue from <checkpoint_dir>/models/last.pth (or the given checkpoint)"),
        option("--overwrite", action="store_true",
               help="start afresh in a --checkpoint_dir that holds a run: delete that run's checkpoints, "
                    "metrics and log first"),
    ))


def add_distillation_group(parser: argparse.ArgumentParser) -> None:
    """The knowledge-distillation loss (the student's training)."""
    add_group(parser, "knowledge distillation", (
        DISTILLATION_LOSS,
        option("--feature_loss_ratio", type=float, default=1.0, help="weight of the KD feature loss"),
        option("--distill_all_diff_features", action="store_true",
               help="distil every difference feature that --distillation_layer selects (not in the original, "
                    "whose zip with the LQ features kept only the first n = min(d, 11) at MLP depth 9: "
                    "blocks 0-10 at the default d=18)"),
    ))


def add_data_group(parser: argparse.ArgumentParser, test_datasets: str, *, teacher_evaluation: bool) -> None:
    """Dataset locations and evaluation data; `teacher_evaluation` adds --teacher_test_augment."""
    paths = [option(f"--{opt}", type=str, default=None,
                    help=f"root of {name} (default <dataset_dir>/{DEFAULT_DIRS[name]})")
             for name, opt in DATASET_PATH_OPTIONS.items()]
    augment = option("--teacher_test_augment", type=str2bool, default=True,
                     help="evaluate the FR-teacher on patch pairs with the paired random flips and 180-degree "
                          "rotation of training (seeded), as the original did (default true); false: plain "
                          "crops. The student is always evaluated on plain crops")
    add_group(parser, "data", (
        DATASET_DIR,
        option("--test_datasets", type=dataset_list, default=dataset_list(test_datasets),
               help=f"comma list of datasets to evaluate on (default {test_datasets}); "
                    "missing ones are skipped with a warning"),
        *paths,
        option("--ref_train_dataset_path", type=str, default=None,
               help=f"non-aligned reference pool for training (default <dataset_dir>/{DEFAULT_DIRS['ref_train']})"),
        option("--ref_test_dataset_path", type=str, default=None,
               help=f"non-aligned reference pool for testing (default <dataset_dir>/{DEFAULT_DIRS['ref_test']})"),
        TEST_PATCH_NUM, TEST_BATCH_SIZE, UPSCALE, USE_FITTING, *([augment] if teacher_evaluation else []),
        option("--ref_cache_gb", type=float, default=None, metavar="GB",
               help="memory for decoded reference images, kept once and shared by the loader workers "
                    "(default: min(16, a quarter of the available memory); a given size, like the default, is "
                    "for the whole machine, divided among the processes of a torchrun on it; 0 = off: decode "
                    "them per sample)"),
    ))


def add_network_group(parser: argparse.ArgumentParser) -> None:
    """The network's shape and starting weights (every script)."""
    add_group(parser, "network", (
        option("--self_patch_num", type=int, default=10, help="number of training & testing image self patches"),
        option("--patch_size", type=int, default=224, help="crop size for training & testing image patches"),
        option("--pretrained", type=pretrained_value, default=True, metavar="false|true|PATH",
               help="backbone weights: true = torchvision's ImageNet weights (cache or download), "
                    "false = random (no network), or a local ResNet-50 state-dict file"),
        option("--print_netC", type=str2bool, default=False, help="print the network"),
    ))


def add_runtime_group(parser: argparse.ArgumentParser, *, torchrun: bool = True) -> None:
    """Device, seed, loader workers and the precision of evaluation (every script); with `torchrun`, the
    timeout of the processes' collectives (scripts that run under torchrun)."""
    distributed = (option("--dist_timeout", type=float, default=60.0, metavar="MINUTES",
                          help="under torchrun: how long a process waits for the others (e.g. while rank 0 writes "
                               "checkpoints) before the run stops (torch's own default is 10)"),) if torchrun else ()
    add_group(parser, "runtime", (
        option("--gpu_ids", type=str, default="0",
               help="GPU id to use; 'cpu', '-1' or '' selects the CPU (also used when no GPU exists)"),
        option("--seed", type=int, default=0, help="seed of every random choice (crops, references, init)"),
        option("--num_workers", type=auto_or_int, default="auto",
               help="data-loading worker processes of each process; auto = the CPUs available divided by the "
                    "processes on this machine (torchrun's LOCAL_WORLD_SIZE), minus one, at most 16"),
        option("--deterministic", action="store_true",
               help="bit-exact CUDA runs: cuDNN deterministic kernels and no autotuning, deterministic "
                    "algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8 (slower; CPU runs are exact without it)"),
        option("--eval_amp", choices=["off", "auto", "fp16", "bf16"], default="off",
               help="mixed precision of evaluation: off = fp32, as the original evaluated (default); "
                    "auto = fp16 on CUDA, off on CPU; bf16 also works on CPU"),
        *distributed,
    ))


def add_weights_group(parser: argparse.ArgumentParser, *options: Option) -> None:
    """The model weights a script loads (each script sets their defaults and help)."""
    add_group(parser, "weights", options)


def add_evaluation_group(parser: argparse.ArgumentParser, *, checkpoint_dir: str) -> None:
    """What test_DistillationIQA.py evaluates and where it writes its results."""
    add_group(parser, "evaluation", (
        TEST_DATASET.replace(default=None, help="test on this dataset only (the original's option); "
                                                "default: the --test_datasets list"),
        TRAIN_DATASET.replace(help="the training set of a checkpoint that does not store its options (the "
                                   "authors' files: kadid10k); its label direction orients the correlations. "
                                   "Checkpoints of this project know their own"),
        option("--test_rounds", type=int, default=10, help="rounds with new random crops and references"),
        option("--checkpoint_dir", type=str, default=checkpoint_dir, help="results/<...>.csv is written below it"),
        SETTING_FILE.replace(default="setting_test.txt"),
        option("--plot", type=str, default=None, metavar="DIR",
               help="write per-dataset scatter plots (prediction vs label, fitted logistic) here"),
        option("--tsne", type=str, default=None, metavar="DIR",
               help="write per-dataset t-SNE maps of the student's HQ-LQ difference features here "
                    "(needs scikit-learn)"),
        option("--tsne_compare", type=str, default=None, metavar="PATH",
               help="a second student checkpoint (e.g. trained without KD) drawn beside the first in the --tsne maps"),
    ))


def add_scoring_group(parser: argparse.ArgumentParser) -> None:
    """The images test_DistillationIQA_single.py scores, its references and its outputs."""
    add_group(parser, "scoring", (
        option("--lq", nargs="+", required=True, metavar="PATH", help="image(s) to score, or a folder of images"),
        option("--ref", nargs="+", default=None, metavar="PATH",
               help="non-aligned HQ reference image(s) or a folder "
                    f"(default <dataset_dir>/{DEFAULT_DIRS['ref_test']})"),
        DATASET_DIR,
        option("--repeats", type=int, default=10, help="random crop sets per image; the score is their mean"),
        TEST_BATCH_SIZE, UPSCALE,
        option("--output", type=str, default=None, metavar="FILE.csv|FILE.json",
               help="also write the scores to this CSV or JSON file"),
        option("--figure", type=str, default=None, metavar="FILE.png",
               help="draw the scored images annotated with their scores: one row per --lq folder "
                    "(loose files form one more row)"),
    ))


def add_compatibility_group(parser: argparse.ArgumentParser, *options: Option, note: str | None) -> None:
    """The one group of options a script accepts without using them, so that command lines written for the
    original run unchanged; `note` (appended to each help) says so."""
    def noted(opt: Option) -> Option:
        text = opt.kwargs.get("help")
        return opt.replace(help=f"{text} ({note})" if text else note) if note else opt

    add_group(parser, COMPATIBILITY_TITLE, [noted(opt) for opt in options], COMPATIBILITY_DESCRIPTION)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (or `argv`) and derive the dependent paths; creates nothing."""
    return finalize_args(parser.parse_args(argv))


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
    _resolve_auto(args)
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
    timeout = getattr(args, "dist_timeout", 1.0)
    if not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"--dist_timeout must be more than 0 minutes, got {args.dist_timeout}")
    cache_gb = getattr(args, "ref_cache_gb", None)
    if cache_gb is not None and not (math.isfinite(cache_gb) and cache_gb >= 0):
        raise UserError(f"--ref_cache_gb must be a finite number, 0 (off) or more, got {cache_gb}")
    if getattr(args, "train_dataset", None) == "":
        raise UserError(f"--train_dataset: expected a dataset name ({DATASET_HELP}), got none")
    if getattr(args, "use_refHQ", True) is False:
        raise UserError("--use_refHQ false is not supported: the network always compares with a reference")
    return args


def _resolve_auto(args: argparse.Namespace) -> None:
    """`--num_workers auto` and `--test_batch_size auto` become numbers sized to this machine and device."""
    from tools.utils import default_num_workers, default_test_batch_size  # late import: torch

    if getattr(args, "num_workers", None) == "auto":
        args.num_workers = default_num_workers()
    if getattr(args, "test_batch_size", None) == "auto":
        args.test_batch_size = default_test_batch_size(getattr(args, "gpu_ids", None))


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
