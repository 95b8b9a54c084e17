"""Evaluate a NAR-student (and optionally the FR-teacher) on test datasets over 10 rounds.

    python test_DistillationIQA.py --studentNet_model_path ./model_zoo/NAR_student_cross_dataset.pth
    python test_DistillationIQA.py --test_datasets live,csiq \
        --teacherNet_model_path ./model_zoo/FR_teacher_cross_dataset.pth
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from functools import partial

import numpy as np

from common.errors import UserError, run_cli
from common.files import ensure_writable_folder, write_csv, write_json
from common.log import get_logger
from dataloaders import REFERENCE_KEY, dataset_class
from option_train_DistillationIQA import set_test_args
from tools import run_folder
from tools.data import build_test_sets, data_options
from tools.epoch import evaluate, images_per_s
from tools.networks import build_network, training_set_of
from tools.options import check_args
from tools.runtime import Run, run_options, setup_run
from tools.utils import cleanup_distributed, note_training_amp_in_testing

METRICS = ("srcc", "plcc", "krcc")
RESULT_FILES = ("test_results.csv", "test_results.json")


def evaluate_rounds(model, test_sets, run, rounds: int, ref_key: str, fit: bool,
                    trained_higher_is_better: bool = True,
                    after_round: Callable[[dict[str, list[dict]]], None] | None = None) -> dict[str, list[dict]]:
    """Metrics per dataset for each round (round r draws its crops and references with epoch r), oriented
    by the label direction of the model's training set; `after_round` gets the rounds so far after each."""
    per_dataset: dict[str, list[dict]] = {t.name: [] for t in test_sets}
    for r in range(rounds):
        for name, metrics in evaluate(model, test_sets, run, r, ref_key, fit,
                                      trained_higher_is_better=trained_higher_is_better).items():
            per_dataset[name].append(metrics)
            get_logger().info(f"round {r}: {name} SRCC {metrics['srcc']:.4f} PLCC {metrics['plcc']:.4f} "
                              f"KRCC {metrics['krcc']:.4f} ({images_per_s(metrics):.1f} images/s)")
        if after_round is not None:
            after_round(per_dataset)
    return per_dataset


def round_rows(model_name: str, per_dataset: dict[str, list[dict]]) -> list[dict]:
    """One CSV row per dataset and round."""
    return [{"model": model_name, "dataset": name, "round": r, **{k: m[k] for k in METRICS}}
            for name, rounds in per_dataset.items() for r, m in enumerate(rounds)]


def write_rounds_so_far(path: str, done: list[dict], model_name: str, per_dataset: dict[str, list[dict]]) -> None:
    """The CSV as it stands after a round (the rows `done` before, this model's rounds so far)."""
    write_csv(path, done + round_rows(model_name, per_dataset))


def summarize(model_name: str, per_dataset: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, rounds in per_dataset.items():
        rows += round_rows(model_name, {name: rounds})
        values = {k: np.array([m[k] for m in rounds]) for k in METRICS}
        rows.append({"model": model_name, "dataset": name, "round": "mean", **{k: v.mean() for k, v in values.items()}})
        rows.append({"model": model_name, "dataset": name, "round": "std", **{k: v.std() for k, v in values.items()}})
        get_logger().info(f"{model_name} {name}: " + "  ".join(
            f"{k.upper()} {values[k].mean():.4f} ± {values[k].std():.4f}" for k in METRICS))
    return rows


def write_plots(folder: str, model_name: str, per_dataset: dict[str, list[dict]], test_sets) -> None:
    from tools.plots import scatter_plot

    for test_set in test_sets:
        rounds = per_dataset[test_set.name]
        pred = np.mean([m["pred"] for m in rounds], axis=0)  # per image, mean over rounds
        label_name = "MOS (higher is better)" if test_set.higher_is_better else "DMOS (lower is better)"
        path = scatter_plot(pred, rounds[0]["label"], os.path.join(folder, f"{model_name}_{test_set.name}.png"),
                            f"{model_name} on {test_set.name}", label_name)
        get_logger().info(f"plot written to {path}")


def student_title(path: str) -> str:
    """"w/ KD" or "w/o KD" from a checkpoint's stored options (its feature_loss_ratio), else the file name."""
    from common.files import safe_torch_load

    checkpoint = safe_torch_load(path)
    options = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    ratio = options.get("feature_loss_ratio") if isinstance(options, dict) else None
    if ratio is None:
        return os.path.basename(path)
    return f"w/ KD (feature_loss_ratio {float(ratio):g})" if float(ratio) > 0 else "w/o KD (feature_loss_ratio 0)"


def write_tsne(folder: str, args: argparse.Namespace, run, student, test_sets) -> None:
    """t-SNE maps of the student's difference features per dataset (and of --tsne_compare's, side by side)."""
    from tools.visuals import difference_codes, tsne_figure

    models = {student_title(args.studentNet_model_path): student}
    if args.tsne_compare:
        other = build_network(run.device, self_patch_num=args.self_patch_num,
                              distillation_layer=args.distillation_layer, weights=args.tsne_compare)
        title = student_title(args.tsne_compare)
        if title in models:
            title = f"{os.path.basename(args.tsne_compare)} ({title})"
        models = {title: other, **models}  # the compared student on the left, as "(a) w/o KD" in the original
    for test_set in test_sets:
        panels, labels = {}, None
        for title, model in models.items():
            panels[title], labels = difference_codes(model, test_set, run, epoch=0)
        label_name = "MOS (higher is better)" if test_set.higher_is_better else "DMOS (lower is better)"
        path = tsne_figure(panels, labels, os.path.join(folder, f"tsne_{test_set.name}.png"), label_name=label_name,
                           title=f"t-SNE of the student's HQ-LQ difference features on {test_set.name}",
                           seed=args.seed)
        get_logger().info(f"t-SNE map written to {path}")


TEST_LOG = "test_log.txt"  # the test run's own log: never the training run's log.txt in the same folder


def setup_test_run(args: argparse.Namespace) -> Run:
    """The run of the test script: the options file and its log (log/test_log.txt) in --checkpoint_dir
    (rank 0), after `check_test_inputs`."""
    def write_options(info) -> None:
        run_folder.on_main(info, lambda: check_test_inputs(args))  # every rank stops on rank 0's error
        check_args(args, rank=info.rank)

    return setup_run(**{**run_options(args), "log_file": os.path.join(args.log_checkpoint_dir, TEST_LOG)},
                     prepare=write_options)


def check_test_inputs(args: argparse.Namespace) -> None:
    """Everything the run reads and writes, checked before any evaluation: the checkpoints, the output folders
    and files, and at least one test dataset on disk."""
    for option in ("studentNet_model_path", "teacherNet_model_path", "tsne_compare"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            raise UserError(f"--{option}: checkpoint not found: {path}")
    if args.tsne:
        from tools.visuals import require_tsne

        require_tsne()
    for option in ("plot", "tsne"):
        if getattr(args, option):
            ensure_writable_folder(getattr(args, option), f"--{option}")
    ensure_writable_folder(args.result_checkpoint_dir, "--checkpoint_dir")
    ensure_writable_folder(args.log_checkpoint_dir, "--checkpoint_dir")
    for name in RESULT_FILES:
        if os.path.isdir(os.path.join(args.result_checkpoint_dir, name)):
            raise UserError(f"--checkpoint_dir: {os.path.join(args.result_checkpoint_dir, name)} is a folder, "
                            "where the results file is written")
    names = [args.test_dataset] if args.test_dataset else args.test_datasets
    if not any(os.path.exists(args.dataset_paths[name]) for name in names):
        looked = ", ".join(f"{name} at {args.dataset_paths[name]}" for name in names) or "none given"
        raise UserError(f"no test dataset found (looked for {looked}): set --dataset_dir or --<name>_path, "
                        "or --test_datasets")


def main(args: argparse.Namespace) -> dict:
    """Evaluate; under torchrun each process evaluates its share of every test set and rank 0 writes."""
    if args.tsne and "WORLD_SIZE" in os.environ:
        raise UserError("--tsne is not supported under torchrun: run the script without torchrun for the maps")
    run = setup_test_run(args)
    try:
        return evaluate_models(args, run)
    finally:
        cleanup_distributed()


def evaluate_models(args: argparse.Namespace, run: Run) -> dict:
    """The test run itself: each model on each test set, --test_rounds times; the CSV/JSON and plots (rank 0)."""
    note_training_amp_in_testing(args.amp, args.eval_amp)
    models = [("student", args.studentNet_model_path, "lq_hq_ref")]
    if args.teacherNet_model_path:
        models.append(("teacher", args.teacherNet_model_path, "lq_hq"))
    networks = {name: build_network(run.device, self_patch_num=args.self_patch_num,
                                    distillation_layer=args.distillation_layer, weights=path, role=name,
                                    option=f"--{name}Net_model_path")
                for name, path, _ in models}
    if args.print_netC:
        get_logger().info(str(networks["student"]))
    test_datasets = [args.test_dataset] if args.test_dataset else args.test_datasets
    rows, report = [], {}
    csv_path = os.path.join(args.result_checkpoint_dir, RESULT_FILES[0])
    for model_name, path, mode in models:
        model = networks[model_name]
        trained_on, source = training_set_of(path, args.train_dataset)
        higher = dataset_class(trained_on).higher_is_better
        get_logger().info(f"{model_name}: trained on {trained_on} (from {source}), labels "
                          f"{'higher' if higher else 'lower'} is better; correlations are flipped on test sets "
                          f"whose labels are {'lower' if higher else 'higher'} is better")
        test_sets = build_test_sets(test_datasets, mode, **data_options(args), batch_size=args.test_batch_size,
                                    repeats=args.test_patch_num, augment_teacher=args.teacher_test_augment,
                                    ref_folder=args.ref_test_dataset_path, ref_cache=run.ref_cache,
                                    pin_memory=run.pin_memory, shard=run.shard)
        if not test_sets:
            get_logger().warning(f"warning: no test dataset found for the {model_name}")
            continue
        # every image header before the first round, as training does
        run_folder.on_main(run.dist, lambda sets=test_sets: run_folder.check_images(
            [t.loader.dataset for t in sets], before="testing"))
        per_dataset = evaluate_rounds(model, test_sets, run, args.test_rounds, REFERENCE_KEY[mode],
                                      args.use_fitting_prcc_srcc, trained_higher_is_better=higher,
                                      after_round=partial(write_rounds_so_far, csv_path, list(rows), model_name)
                                      if run.dist.is_main else None)
        rows += summarize(model_name, per_dataset)
        report[model_name] = {name: {k: float(np.mean([m[k] for m in rounds])) for k in METRICS}
                              for name, rounds in per_dataset.items()}
        if args.plot and run.dist.is_main:
            write_plots(args.plot, model_name, per_dataset, test_sets)
        if args.tsne and model_name == "student":
            write_tsne(args.tsne, args, run, model, test_sets)
    if rows and run.dist.is_main:
        write_csv(csv_path, rows)
        write_json(os.path.join(args.result_checkpoint_dir, RESULT_FILES[1]), report)
        get_logger().info(f"results written to {csv_path}")
    return report


if __name__ == "__main__":
    run_cli(lambda: main(set_test_args()))
