"""A whole training run: its rounds (the within-dataset protocol's content splits), resume, the per-epoch
evaluation, best/last bookkeeping and checkpoints, and the final report. One epoch's code is in tools/epoch.py."""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import files
from common.errors import UserError
from common.log import get_logger
from dataloaders import REFERENCE_KEY, dataset_class, split_contents
from models.DistillationIQA import DistillationIQANet
from tools import checkpoint as ckpt
from tools import collectives, run_folder
from tools.data import build_test_sets, build_train_loader, data_options, dataset_root
from tools.epoch import (
    Distillation,
    NonFiniteLossError,
    TestSet,
    evaluate,
    next_schedule,
    train_one_epoch,
)
from tools.metrics import quality_sum
from tools.networks import maybe_compile
from tools.options import check_args
from tools.runtime import Run, run_options, setup_run
from tools.training_state import RunRecord, TrainingState
from tools.utils import seed_everything

WORST_QUALITY_SUM = -3.0  # SRCC + PLCC + KRCC of a model that ranks exactly backwards


@dataclass
class Role:
    """What differs between the FR-teacher and the NAR-student runs."""

    name: str  # checkpoint file prefix
    mode: str  # the data mode of training and testing: 'lq_hq' (teacher) or 'lq_hq_ref' (student)
    kd: Distillation | None = None  # the student's knowledge distillation

    @property
    def kind(self) -> str:
        """'teacher' or 'student', as recorded in the checkpoints."""
        return "teacher" if self.mode == "lq_hq" else "student"

    @property
    def ref_key(self) -> str:
        """The batch key of the reference the network compares with at test time."""
        return REFERENCE_KEY[self.mode]

    @property
    def teacher(self) -> nn.Module | None:
        return self.kd.teacher if self.kd is not None else None


def setup_training_run(args: argparse.Namespace) -> Run:
    """The run of a training script: its checkpoint folder prepared (one run per folder, locked while the run
    lives; see tools/run_folder.py) and its options file written on rank 0, the log in <checkpoint_dir>/log."""
    def prepare(info) -> run_folder.RunLock | None:
        lock = run_folder.prepare(args, info)
        check_args(args, rank=info.rank)
        return lock

    return setup_run(**run_options(args), prepare=prepare)


# ---- best-on-test bookkeeping -----------------------------------------------------------------------
def _score(results: dict[str, dict]) -> float:
    """The mean over the test sets of SRCC + PLCC + KRCC; a test set where it is NaN (e.g. constant predictions)
    counts as the worst sum, -3. -inf without test sets."""
    values = [max(quality_sum(m), WORST_QUALITY_SUM) for m in results.values()]
    return float(np.mean(values)) if values else float("-inf")


def update_best(best: dict, per_dataset_best: dict[str, dict], results: dict[str, dict], epoch: int) -> bool:
    """Best-on-test bookkeeping after `epoch`, by SRCC + PLCC + KRCC (the original's criterion).

    Per dataset: the epoch with the highest sum; a NaN sum never wins there, and a NaN best is replaced by
    any later number. `best` (for best.pth): the highest mean of the sums over the test sets, a NaN sum
    counting as the worst, -3. Returns whether `best` changed (best.pth is written then).
    """
    score = _score(results)
    improved = best["epoch"] is None or score > best["score"]
    if improved:
        best.update({"score": score, "epoch": epoch, "metrics": results})
    for name, m in results.items():
        if name not in per_dataset_best or quality_sum(m) > quality_sum(per_dataset_best[name]):
            per_dataset_best[name] = {**m, "epoch": epoch}
    return improved


def _format_metrics(results: dict[str, dict]) -> str:
    return "  ".join(f"{name}: SRCC {m['srcc']:.4f} PLCC {m['plcc']:.4f} KRCC {m['krcc']:.4f}"
                     for name, m in results.items())


def _eval_rate(results: dict[str, dict]) -> str:
    seconds = sum(m["seconds"] for m in results.values())
    return f"; evaluation {sum(m['images'] for m in results.values()) / seconds:.1f} images/s" if seconds else ""


def _plain(results: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: m[k] for k in ("srcc", "plcc", "krcc", "rmse")} for name, m in results.items()}


# ---- the run ----------------------------------------------------------------------------------------
def train_and_evaluate(args: argparse.Namespace, run: Run, role: Role,
                       build_model: Callable[[], DistillationIQANet]) -> dict:
    """Train for `--epochs` (per round), evaluating every epoch; checkpoints, CSV, resume, rounds.

    Same --train_dataset and --test_dataset: the within-dataset protocol (80/20 content splits,
    --train_test_num rounds, median of the rounds' best SRCC). Otherwise the cross-dataset protocol.
    """
    within = args.train_dataset == args.test_dataset
    rounds = args.train_test_num if within else 1
    train_root = dataset_root(args.dataset_paths, args.train_dataset, "--train_dataset")
    total = check_within_split(args.train_dataset, train_root, args.seed) if within else 0
    resumed = _load_resume(args, run, role, rounds) if args.resume else None
    record = RunRecord(role.kind, ckpt.serializable_options(vars(args)),
                       run_folder.fingerprint(role.teacher) if role.teacher is not None else None,
                       history=resumed["history"] if resumed else [], rounds=resumed["rounds"] if resumed else [])
    first = len(record.rounds)
    for round_index in range(first, rounds):
        content_ids = (None, None)
        if within:
            content_ids = split_contents(total, 0.8, seed=args.seed + round_index)
        train_loader, test_sets = _round_data(args, run, role, (round_index, rounds), content_ids, within,
                                              check_images=round_index == first)
        state = resumed if resumed and resumed.get("round", 0) == round_index else None
        record.rounds.append(_train_round(args, run, role, build_model, train_loader, test_sets, round_index,
                                          rounds, record, state))
        resumed = None
    report = final_report(record.rounds, within)
    if run.dist.is_main:
        files.write_json(os.path.join(args.result_checkpoint_dir, "summary.json"), report)
        get_logger().info(report["text"])
    return report


def check_within_split(name: str, root: str | os.PathLike, seed: int, train_ratio: float = 0.8) -> int:
    """The number of contents of dataset `name` (within-dataset protocol), checked before any training: its
    split must leave at least one content for training and one for testing (`UserError` with the numbers)."""
    total = dataset_class(name).read_index_checked(Path(root))[1]
    train_ids, test_ids = split_contents(total, train_ratio, seed=seed) if total else ([], [])
    if not train_ids or not test_ids:
        raise UserError(f"--train_dataset = --test_dataset {name} (within-dataset protocol): its {total} "
                        f"content(s) split {train_ratio:.0%}/{1 - train_ratio:.0%} into {len(train_ids)} for "
                        f"training and {len(test_ids)} for testing; each side needs at least one (a dataset of at "
                        "least 3 contents), or test on another dataset (--test_dataset)")
    return total


def _round_data(args: argparse.Namespace, run: Run, role: Role, round_of: tuple[int, int], content_ids: tuple,
                within: bool, check_images: bool) -> tuple[object, list[TestSet]]:
    """A round's training loader and test sets (each process evaluates its share of them), from `content_ids` =
    (training, test) contents (None: whole datasets); `round_of` = (round index, rounds). The first round of a
    session checks every image (rank 0)."""
    round_index, rounds = round_of
    options = data_options(args)
    train_loader = build_train_loader(args.train_dataset, role.mode, **{**options, "seed": args.seed + round_index},
                                      batch_size=args.batch_size, world_size=run.dist.world_size,
                                      repeats=args.train_patch_num,
                                      ref_folder=args.ref_train_dataset_path, content_ids=content_ids[0],
                                      ref_cache=run.ref_cache, pin_memory=run.pin_memory)
    augment = role.mode == "lq_hq" and args.teacher_test_augment  # the student's parser lacks the option
    test_sets = build_test_sets([args.test_dataset] if within else args.test_datasets, role.mode,
                                **options, batch_size=args.test_batch_size,
                                repeats=args.test_patch_num, augment_teacher=augment,
                                ref_folder=args.ref_test_dataset_path, content_ids=content_ids[1],
                                ref_cache=run.ref_cache, pin_memory=run.pin_memory, shard=run.shard)
    if check_images:  # every image of this round's data (a first round covers whole datasets) before training
        datasets = [train_loader.dataset, *(t.loader.dataset for t in test_sets)]
        run_folder.on_main(run.dist, lambda: run_folder.check_images(datasets))
    get_logger().info(f"round {round_index + 1}/{rounds}: {len(train_loader.dataset)} training samples from "
                      f"{args.train_dataset}; testing on {[t.name for t in test_sets] or 'nothing'}")
    return train_loader, test_sets


def _load_resume(args: argparse.Namespace, run: Run, role: Role, rounds: int) -> dict:
    path = run_folder.resume_path(args)
    state = ckpt.load_training_checkpoint(path)
    notes = run_folder.check_resume(args, state, role.kind, role.teacher)
    notes += run_folder.on_main(run.dist, lambda: run_folder.repair(args, state, role.kind, rounds)) or []
    for line in notes:
        get_logger().info(line)
    done = f"epoch {state['epoch'] + 1} trained, its evaluation left" if state.get("pending") is not None \
        else f"epoch {state['epoch']} done"
    get_logger().info(f"resuming from {path} (round {state.get('round', 0) + 1}, {done})")
    return state


def _round_suffix(round_index: int, rounds: int) -> str:
    return f"_r{round_index + 1}" if rounds > 1 else ""


def _parallel(model: DistillationIQANet, run: Run, freeze_backbone_bn: bool) -> nn.Module:
    """The module the training loop calls: `model` itself, or its DistributedDataParallel wrapper."""
    if not run.dist.distributed:
        return model
    if run.device.type == "cuda" and not freeze_backbone_bn:
        # Train-mode BatchNorm over the whole global batch, as a single process would compute it.
        model.feature_extractor = nn.SyncBatchNorm.convert_sync_batchnorm(model.feature_extractor)
    return nn.parallel.DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda"
                                               else None)


def _train_round(args: argparse.Namespace, run: Run, role: Role, build_model, train_loader,
                 test_sets: Sequence[TestSet], round_index: int, rounds: int, record: RunRecord,
                 resumed: dict | None) -> dict:
    """Train and evaluate one round's epochs, saving after each; the round's summary."""
    seed_everything(args.seed + round_index)
    model = build_model()
    if args.print_netC:
        get_logger().info(str(model))
    state = TrainingState.start(model, run.precision.scaler(), round_index=round_index, lr=args.lr,
                                lr_ratio=args.lr_ratio, weight_decay=args.weight_decay,
                                precision=run.precision.name, device=run.device, resumed=resumed)
    net = maybe_compile(_parallel(state.model, run, args.freeze_backbone_bn), args.compile)
    for epoch in range(state.epoch + 1, args.epochs):
        if state.pending is not None:  # trained before its evaluation failed: only the evaluation is left
            stats, state.pending = state.pending, None
        else:
            stats = _train_epoch(args, run, role, net, state, train_loader, epoch)
        results = _evaluate_epoch(args, run, role, state, record, test_sets, epoch, stats)
        state.epoch, state.metrics = epoch, _plain(results)
        row = {"round": round_index + 1, "epoch": epoch, "lr": state.lr, "lr_ratio": state.lr_ratio, **stats}
        for name, m in state.metrics.items():
            row.update({f"{name}_srcc": m["srcc"], f"{name}_plcc": m["plcc"], f"{name}_krcc": m["krcc"]})
        record.history.append(row)
        improved = update_best(state.best, state.per_dataset_best, state.metrics, epoch)
        get_logger().info(
            f"round {round_index + 1} epoch {epoch}: loss {stats['loss']:.4f} train SRCC {stats['train_srcc']:.4f}  "
            f"{_format_metrics(results)}  [{stats['samples_per_s']:.1f} samples/s, "
            f"{100 * stats['data_share']:.0f}% waiting for data{_eval_rate(results)}]")
        state.rebuild_optimizer(*next_schedule(state.lr, state.lr_ratio, epoch, args.update_opt_epoch))
        if run.dist.is_main:
            _save_epoch(args, role, state, record, improved, _round_suffix(round_index, rounds))
        collectives.barrier(run.dist)
    return state.summary()


def _train_epoch(args: argparse.Namespace, run: Run, role: Role, net: nn.Module, state: TrainingState,
                 train_loader, epoch: int) -> dict:
    """One training epoch; a NaN or infinite loss or weight stops the run with one line, saving nothing."""
    try:
        stats = train_one_epoch(net, train_loader, state.optimizer, state.scaler, run, epoch, kd=role.kd,
                                net_print=args.net_print)
        if not bool(torch.stack([torch.isfinite(p).all() for p in state.model.trainable_parameters()]).all()):
            raise NonFiniteLossError(f"the weights became NaN or infinite in epoch {epoch}")
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"training stopped: {err} (try a lower --lr); nothing of this epoch was saved, "
                                 f"the checkpoints already in {args.model_checkpoint_dir} are kept") from None
    return stats


def _evaluate_epoch(args: argparse.Namespace, run: Run, role: Role, state: TrainingState, record: RunRecord,
                    test_sets: Sequence[TestSet], epoch: int, stats: dict) -> dict[str, dict]:
    """The epoch's results on the test sets (every process evaluates its share; all get the results). If
    evaluation fails, the trained epoch is kept in last.pth (as pending, rank 0) so that --resume only evaluates
    it."""
    try:
        return evaluate(state.model, test_sets, run, epoch, role.ref_key, args.use_fitting_prcc_srcc,
                        trained_higher_is_better=dataset_class(args.train_dataset).higher_is_better)
    except Exception as err:  # a bad test image, a vanished file ...: keep the trained epoch
        path = os.path.join(args.model_checkpoint_dir, "last.pth")
        if run.dist.is_main:
            files.atomic_torch_save(state.checkpoint(record, pending=stats), path)
        collectives.barrier(run.dist)  # no process ends (and has torchrun stop the others) before it is saved
        note = f"the trained epoch {epoch} is saved in {path}: fix the cause and continue with --resume"
        if isinstance(err, UserError):
            raise UserError(f"evaluation after epoch {epoch} failed: {err}\n{note}") from None
        get_logger().error(f"evaluation after epoch {epoch} failed; {note}")
        raise


def _save_epoch(args: argparse.Namespace, role: Role, state: TrainingState, record: RunRecord, improved: bool,
                suffix: str) -> None:
    """last.pth first (whatever fails after it, --resume restores the epoch and best files from it), the epoch's
    own file, best.pth when the epoch improved, and metrics.csv."""
    models_dir, epoch = args.model_checkpoint_dir, state.epoch
    names = ["last.pth", f"{role.name}{suffix}_{epoch}.pth"] + ([f"best{suffix}.pth"] if improved else [])
    try:
        files.atomic_torch_save(state.checkpoint(record), *(os.path.join(models_dir, name) for name in names))
        files.write_csv(os.path.join(args.result_checkpoint_dir, "metrics.csv"), record.history)
    except UserError as err:
        if not os.path.isfile(os.path.join(models_dir, "last.pth")):
            raise UserError(f"{err} (training stopped after epoch {epoch}; no checkpoint could be saved yet, "
                            f"{models_dir} holds no last.pth: make room and run the same command again)") from None
        raise UserError(f"{err} (training stopped after epoch {epoch}; {models_dir}/last.pth holds the last epoch "
                        "that could be saved: make room and continue with --resume)") from None


# ---- the report -------------------------------------------------------------------------------------
def final_report(rounds: list[dict], within: bool) -> dict:
    """summary.json: each round's best (per dataset) and last epoch, the protocol, and for the within-dataset
    protocol the median over the rounds; `text` is what the log prints."""
    lines = []
    for r in rounds:
        for name, m in r["best_per_dataset"].items():
            last = r["last"].get(name, {})
            lines.append(f"round {r['round']} {name}: best SRCC {m['srcc']:.4f} PLCC {m['plcc']:.4f} "
                         f"KRCC {m['krcc']:.4f} (epoch {m['epoch']}); last epoch SRCC "
                         f"{last.get('srcc', float('nan')):.4f} PLCC {last.get('plcc', float('nan')):.4f} "
                         f"KRCC {last.get('krcc', float('nan')):.4f}")
    report: dict = {"rounds": rounds, "protocol": "within-dataset" if within else "cross-dataset"}
    if within and rounds and rounds[0]["best_per_dataset"]:
        name = next(iter(rounds[0]["best_per_dataset"]))
        median = {k: statistics.median(r["best_per_dataset"][name][k] for r in rounds
                                       if name in r["best_per_dataset"]) for k in ("srcc", "plcc", "krcc")}
        report["median"] = {name: median}
        lines.append(f"median over {len(rounds)} rounds ({name}): SRCC {median['srcc']:.4f} "
                     f"PLCC {median['plcc']:.4f} KRCC {median['krcc']:.4f}")
    report["text"] = "\n".join(lines) if lines else "no test set was evaluated"
    return report
