"""The training and evaluation loop shared by the teacher, student and test scripts."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from common import files
from common.errors import UserError
from common.log import get_logger, setup_logger
from dataloaders import (
    DATASET_NAMES,
    build_dataset,
    build_loader,
    dataset_class,
    list_reference_images,
    set_loader_epoch,
    split_contents,
)
from dataloaders.ref_cache import ReferenceCache, build_reference_cache
from dataloaders.sampling import to_model_input
from models.DistillationIQA import DistillationIQANet
from tools import checkpoint as ckpt
from tools import run_folder
from tools.metrics import compute_metrics, oriented, quality_sum
from tools.options import check_args
from tools.utils import (
    DistInfo,
    Precision,
    init_distributed,
    resolve_precision,
    seed_everything,
)

LR_RATIO_RESET_EPOCH = 20  # after epoch t > 20 (0-based) the non-backbone lr multiplier becomes 1


# ---- set-up -----------------------------------------------------------------------------------------
@dataclass
class Run:
    """What a script needs to know about where it runs."""

    args: argparse.Namespace
    dist: DistInfo
    device: torch.device
    precision: Precision  # training
    eval_precision: Precision | None = None  # evaluation; None = fp32
    lock: run_folder.RunLock | None = None
    ref_cache: ReferenceCache | None = None

    def evaluation_precision(self) -> Precision:
        """The precision of evaluation: fp32 unless mixed precision was asked for it (--eval_amp)."""
        return self.eval_precision or Precision(self.device.type, None)

    def close(self) -> None:
        """Release the checkpoint folder's lock (training runs)."""
        if self.lock is not None:
            self.lock.release()


def setup_run(args: argparse.Namespace, *, write_options: bool = True) -> Run:
    """Distributed set-up, device, seeding, logger and (rank 0) the options file.

    For a training run (options with --resume) the checkpoint folder is prepared first: one run per
    folder, locked while the run lives (see tools/run_folder.py).
    """
    info, device = init_distributed(args.gpu_ids)
    lock = run_folder.prepare(args, info) if write_options and hasattr(args, "resume") else None
    if write_options:
        check_args(args, rank=info.rank)
    log_file = os.path.join(args.log_checkpoint_dir, "log.txt") if hasattr(args, "log_checkpoint_dir") else None
    setup_logger(log_file, info.is_main)
    seed_everything(args.seed)
    precision = resolve_precision(args.amp, device)
    eval_precision = resolve_precision(getattr(args, "eval_amp", "off"), device)
    get_logger().info(f"device {device}, precision {precision.dtype or 'fp32'} "
                      f"(evaluation {eval_precision.dtype or 'fp32'}), world size {info.world_size}, seed {args.seed}")
    ref_cache = build_reference_cache(getattr(args, "ref_cache_gb", 0), getattr(args, "num_workers", 0))
    get_logger().info(ref_cache.describe() if ref_cache is not None else "reference cache: off")
    return Run(args, info, device, precision, eval_precision, lock, ref_cache)


def build_network(args: argparse.Namespace, device: torch.device, *, weights: str | None = None,
                  role: str | None = None, option: str = "checkpoint") -> DistillationIQANet:
    """A `DistillationIQANet` at the options' sizes; from `weights` (a checkpoint) when given.

    With a checkpoint the backbone is not fetched separately (the checkpoint holds it). With `role`
    ('teacher' or 'student'), a checkpoint of this project recorded as the other role is refused,
    naming `option`.
    """
    sizes = {"self_patch_num": args.self_patch_num, "distillation_layer": args.distillation_layer,
             "backbone_bn_eval": getattr(args, "freeze_backbone_bn", False)}
    if weights:
        name = f"{option} {weights}"
        loaded = ckpt.load_model_checkpoint(weights, option, role) if role else weights
        model = DistillationIQANet.from_checkpoint(loaded, name=name, **sizes)
    else:
        model = DistillationIQANet(pretrained=args.pretrained, **sizes)
    if getattr(args, "print_netC", False):
        get_logger().info(str(model))
    return model.to(device)


def training_set_of(path: str | os.PathLike, default: str) -> tuple[str, str]:
    """(training set, where that was read) of a checkpoint: its stored options (this project's files), else
    `default` (--train_dataset; the authors' released files were trained on kadid10k)."""
    checkpoint = files.safe_torch_load(path)
    stored = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if isinstance(stored, dict) and stored.get("train_dataset") in DATASET_NAMES:
        return stored["train_dataset"], "the checkpoint's options"
    return default, "--train_dataset (the checkpoint stores no options)"


def check_student_training_set(args: argparse.Namespace) -> None:
    """The student's KD needs the teacher's view of each training image with its pixel-aligned reference:
    an authentic training set (no aligned references) is refused at start."""
    if not dataset_class(args.train_dataset).has_aligned_reference:
        usable = ", ".join(n for n in DATASET_NAMES if dataset_class(n).has_aligned_reference)
        raise UserError(f"--train_dataset {args.train_dataset}: the NAR-student cannot be trained on an authentic "
                        "dataset: the teacher's knowledge distillation needs pixel-aligned HQ references, which it "
                        f"lacks (train on one of {usable}; {args.train_dataset} can serve as a test set)")


def load_frozen_teacher(args: argparse.Namespace, device: torch.device) -> DistillationIQANet:
    """The FR-teacher from --teacherNet_model_path: eval mode, no gradients."""
    if not args.teacherNet_model_path:
        raise UserError("--teacherNet_model_path is required to train the student (the FR-teacher's weights)")
    if not Path(args.teacherNet_model_path).is_file():
        raise UserError(f"--teacherNet_model_path: teacher checkpoint not found: {args.teacherNet_model_path} "
                        "(train one with train_DistillationIQA_FR.py or put the released file there)")
    teacher = build_network(args, device, weights=args.teacherNet_model_path, role="teacher",
                            option="--teacherNet_model_path")
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad = False
    return teacher


# ---- optimiser and schedule (faithful to the original) ------------------------------------------------
def make_optimizer(model: DistillationIQANet, lr: float, lr_ratio: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with two groups: everything but the backbone at lr * lr_ratio, the (frozen) backbone at lr."""
    groups = [{"params": model.trainable_parameters(), "lr": lr * lr_ratio},
              {"params": list(model.feature_extractor.parameters()), "lr": lr}]
    return torch.optim.Adam(groups, weight_decay=weight_decay)


def next_schedule(lr: float, lr_ratio: float, epoch: int, update_opt_epoch: int) -> tuple[float, float]:
    """lr and lr_ratio after (0-based) epoch `epoch`: lr / 10^(epoch // update_opt_epoch), compounding."""
    lr = lr / 10 ** (epoch // update_opt_epoch)
    if epoch > LR_RATIO_RESET_EPOCH:
        lr_ratio = 1.0
    return lr, lr_ratio


# ---- knowledge distillation -------------------------------------------------------------------------
def select_distilled_features(teacher_diff: Sequence[Tensor], student_diff: Sequence[Tensor],
                              teacher_lq: Sequence[Tensor], student_lq: Sequence[Tensor], *,
                              all_diff: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """(teacher, student) difference-encoder features that enter the KD loss, paired in order.

    Faithful rule: the original zips the four inner-feature lists, so only the first
    n = min(len of each list) difference features are distilled (blocks 0-10 of 18 at the defaults).
    `all_diff` distils every returned difference feature instead.
    """
    if all_diff:
        if len(teacher_diff) != len(student_diff):
            raise ValueError(f"{len(student_diff)} student features vs {len(teacher_diff)} teacher features")
        n = len(teacher_diff)
    else:
        n = min(len(teacher_diff), len(student_diff), len(teacher_lq), len(student_lq))
    if n == 0:
        raise UserError("--distillation_layer leaves no difference feature to distil (it must be at least 1)")
    return list(teacher_diff[:n]), list(student_diff[:n])


def feature_distillation_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], kind: str = "mse") -> Tensor:
    """Σ_k D(teacher_k, student_k) over paired inner features; D = mse | l1 | kldiv (over the feature axis)."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student features vs {len(teacher)} teacher features")
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        s, t = s.float(), t.detach().float()
        if kind == "mse":
            total = total + F.mse_loss(s, t)
        elif kind == "l1":
            total = total + F.l1_loss(s, t)
        elif kind == "kldiv":
            total = total + F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1),
                                     reduction="batchmean", log_target=True)
        else:
            raise ValueError(f"unknown distillation loss {kind!r}: expected mse, l1 or kldiv")
    return total


# ---- one epoch --------------------------------------------------------------------------------------
class NonFiniteLossError(UserError):
    """Training diverged: the loss (or a weight) is NaN or infinite."""


def _to(batch: dict, key: str, device: torch.device) -> Tensor:
    """batch[key] on `device`; uint8 patches are normalised there (see to_model_input)."""
    return to_model_input(batch[key], device)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    run: Run, epoch: int, *, teacher: nn.Module | None = None, distillation_loss: str = "mse",
                    feature_loss_ratio: float = 1.0, net_print: int = 2000, distill_all_diff: bool = False) -> dict:
    """One pass over `loader`. Without `teacher`: the FR-teacher (LQ vs aligned HQ). With it: the student
    (LQ vs non-aligned reference) plus the KD loss on the difference-encoder features chosen by
    `select_distilled_features`."""
    logger = get_logger()
    model.train()
    set_loader_epoch(loader, epoch)
    losses, feature_losses, preds, labels = [], [], [], []
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=None if run.dist.is_main else True, leave=False)
    data_time, start = 0.0, time.perf_counter()
    tick = start
    for step, batch in enumerate(bar, start=1):
        data_time += time.perf_counter() - tick
        lq, label = _to(batch, "lq", run.device), _to(batch, "label", run.device).float()
        ref = _to(batch, "hq" if teacher is None else "ref", run.device)
        with run.precision.autocast():
            diff_inner, lq_inner, pred = model(lq, ref)
            loss = F.l1_loss(pred.float(), label)
            if teacher is not None:
                with torch.no_grad():
                    teacher_diff, teacher_lq, _ = teacher(lq, _to(batch, "hq", run.device))
                distilled_t, distilled_s = select_distilled_features(teacher_diff, diff_inner, teacher_lq, lq_inner,
                                                                     all_diff=distill_all_diff)
                feature_loss = feature_distillation_loss(distilled_s, distilled_t, distillation_loss)
                feature_losses.append(feature_loss.item())
                loss = loss + feature_loss_ratio * feature_loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise NonFiniteLossError(f"the loss is {losses[-1]} at epoch {epoch}, iteration {step}")
        preds.append(pred.detach().float().cpu())
        labels.append(label.cpu())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % net_print == 0:
            logger.info(f"epoch {epoch} iter {step}: loss {np.mean(losses[-net_print:]):.4f}")
        tick = time.perf_counter()  # loss.item() above waited for the device
    elapsed = time.perf_counter() - start
    pred_all, label_all = _gather(torch.cat(preds) if preds else torch.zeros(0), run.dist), \
        _gather(torch.cat(labels) if labels else torch.zeros(0), run.dist)
    srcc = compute_metrics(pred_all, label_all, fit=False)["srcc"] if len(pred_all) > 1 else float("nan")
    result = {"loss": _mean_across(losses, run.dist), "train_srcc": srcc,
              "samples_per_s": len(pred_all) / elapsed if elapsed else float("nan"),
              "data_share": data_time / elapsed if elapsed else float("nan")}
    if teacher is not None:
        result["feature_loss"] = _mean_across(feature_losses, run.dist)
    return result


def _gather(values: Tensor, info: DistInfo) -> np.ndarray:
    if not info.distributed:
        return values.numpy()
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, values.numpy())
    return np.concatenate(parts)


def _mean_across(values: list[float], info: DistInfo) -> float:
    total = torch.tensor([sum(values), len(values)], dtype=torch.float64)
    if info.distributed:
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else float("nan")


# ---- evaluation -------------------------------------------------------------------------------------
@dataclass
class TestSet:
    name: str
    loader: object
    higher_is_better: bool
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))


@torch.inference_mode()
def predict(model: nn.Module, loader, run: Run, epoch: int, ref_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image predictions (mean over the dataset's repeats) and labels, in dataset order.

    Runs in fp32 unless the run asks for mixed-precision evaluation (`Run.eval_precision`)."""
    model.eval()
    set_loader_epoch(loader, epoch)
    precision = run.evaluation_precision()
    preds, indices = [], []
    for batch in loader:
        lq, ref = _to(batch, "lq", run.device), _to(batch, ref_key, run.device)
        with precision.autocast():
            _, _, pred = model(lq, ref)
        preds.append(pred.float().cpu())
        indices.append(torch.as_tensor(batch["index"]))
    pred = torch.cat(preds).numpy().astype(np.float64)
    order = torch.cat(indices).numpy()
    samples = loader.dataset.samples
    per_image: dict[Path, list[float]] = {}
    label_of: dict[Path, float] = {}
    for i, p in zip(order, pred):
        sample = samples[int(i)]
        per_image.setdefault(sample.lq_path, []).append(float(p))
        label_of[sample.lq_path] = float(sample.label)
    keys = list(per_image)
    return np.array([np.mean(per_image[k]) for k in keys]), np.array([label_of[k] for k in keys])


def evaluate(model: nn.Module, test_sets: Sequence[TestSet], run: Run, epoch: int, ref_key: str,
             fit: bool = True, *, trained_higher_is_better: bool) -> dict[str, dict]:
    """Metrics per test set, oriented so that a model that ranks right is positive: the sign flips where the
    test set's label direction differs from that of the model's training set (`trained_higher_is_better`)."""
    results = {}
    for test_set in test_sets:
        start = time.perf_counter()
        pred, labels = predict(model, test_set.loader, run, epoch, ref_key)
        seconds = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            metrics = oriented(compute_metrics(pred, labels, fit=fit),
                               trained_higher_is_better=trained_higher_is_better,
                               test_higher_is_better=test_set.higher_is_better)
        metrics["pred"], metrics["label"] = pred, labels
        metrics["images"], metrics["seconds"] = len(test_set.loader.dataset), seconds
        results[test_set.name] = metrics
    return results


def dataset_root(args: argparse.Namespace, name: str) -> Path:
    return Path(args.dataset_paths[name])


def build_test_sets(args: argparse.Namespace, names: Sequence[str], mode: str, *, content_ids=None,
                    ref_folder: str | None = None, batch_size: int | None = None,
                    ref_cache: ReferenceCache | None = None) -> list[TestSet]:
    """Test loaders for the datasets that are on disk; missing ones are skipped with a warning naming the path.

    The teacher ('lq_hq') cannot be evaluated on authentic datasets: those are skipped with a warning. Its
    patch pairs get the paired random flips and 180-degree rotation, as the original evaluated it, unless
    --teacher_test_augment false.
    Their reference images go into `ref_cache` when given.
    """
    logger = get_logger()
    ref_paths = list_reference_images(ref_folder) if mode == "lq_hq_ref" else None
    test_sets = []
    for name in names:
        root = dataset_root(args, name)
        if not root.exists():
            logger.warning(f"warning: test dataset {name} not found at {root}: skipped")
            continue
        if mode == "lq_hq" and not dataset_class(name).has_aligned_reference:
            logger.warning(f"warning: {name} has no aligned references: the FR-teacher is not evaluated on it")
            continue
        dataset = build_dataset(name, root, mode, patch_size=args.patch_size, patch_num=args.self_patch_num,
                                train=False, content_ids=content_ids, ref_paths=ref_paths, seed=args.seed,
                                repeats=args.test_patch_num, upscale=args.upscale_small_images,
                                augment_eval=mode == "lq_hq" and getattr(args, "teacher_test_augment", True),
                                ref_cache=ref_cache)
        loader = build_loader(dataset, batch_size or args.test_batch_size, shuffle=False, seed=args.seed,
                              num_workers=args.num_workers, distributed=False)
        test_sets.append(TestSet(name, loader, dataset.higher_is_better))
    return test_sets


# ---- the whole training run ---------------------------------------------------------------------------
@dataclass
class Role:
    """What differs between the FR-teacher and the NAR-student runs."""

    name: str  # checkpoint file prefix
    train_mode: str
    test_ref_key: str
    teacher: nn.Module | None = None

    @property
    def kind(self) -> str:
        """'teacher' or 'student', as recorded in the checkpoints."""
        return "teacher" if self.train_mode == "lq_hq" else "student"


def _format_metrics(results: dict[str, dict]) -> str:
    return "  ".join(f"{name}: SRCC {m['srcc']:.4f} PLCC {m['plcc']:.4f} KRCC {m['krcc']:.4f}"
                     for name, m in results.items())


WORST_QUALITY_SUM = -3.0  # SRCC + PLCC + KRCC of a model that ranks exactly backwards


def images_per_s(metrics: dict) -> float:
    """Evaluation throughput of one test set's results (image crop sets scored per second)."""
    return metrics["images"] / metrics["seconds"] if metrics["seconds"] else float("nan")


def _eval_rate(results: dict[str, dict]) -> str:
    seconds = sum(m["seconds"] for m in results.values())
    return f"; evaluation {sum(m['images'] for m in results.values()) / seconds:.1f} images/s" if seconds else ""


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


def _plain(results: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: m[k] for k in ("srcc", "plcc", "krcc", "rmse")} for name, m in results.items()}


def train_and_evaluate(run: Run, role: Role, build_model: Callable[[], DistillationIQANet]) -> dict:
    """Train for `--epochs` (per round), evaluating every epoch; checkpoints, CSV, resume, rounds.

    Same --train_dataset and --test_dataset: the within-dataset protocol (80/20 content splits,
    --train_test_num rounds, median of the rounds' best SRCC). Otherwise the cross-dataset protocol.
    """
    args, logger = run.args, get_logger()
    within = args.train_dataset == args.test_dataset
    rounds = args.train_test_num if within else 1
    ref_train = list_reference_images(args.ref_train_dataset_path) if role.train_mode == "lq_hq_ref" else None
    train_root = dataset_root(args, args.train_dataset)
    if not train_root.exists():
        raise UserError(f"--train_dataset {args.train_dataset}: not found at {train_root} "
                        f"(set --dataset_dir or --{args.train_dataset.replace('-', '')}_path; see dataset/README.md)")

    state = _load_resume(run, role, rounds) if args.resume else None
    checked = False
    finished_rounds: list[dict] = state["rounds"] if state else []
    history: list[dict] = state["history"] if state else []
    for round_index in range(len(finished_rounds), rounds):
        train_ids = test_ids = None
        if within:
            total = dataset_class(args.train_dataset).read_index(train_root)[1]
            train_ids, test_ids = split_contents(total, 0.8, seed=args.seed + round_index)
        train_set = build_dataset(args.train_dataset, train_root, role.train_mode, patch_size=args.patch_size,
                                  patch_num=args.self_patch_num, train=True, content_ids=train_ids,
                                  ref_paths=ref_train, seed=args.seed + round_index,
                                  repeats=args.train_patch_num, upscale=args.upscale_small_images,
                                  ref_cache=run.ref_cache)
        world = run.dist.world_size
        if args.batch_size % world:
            raise UserError(f"--batch_size {args.batch_size} must be divisible by the {world} processes")
        train_loader = build_loader(train_set, args.batch_size // world, shuffle=True,
                                    seed=args.seed + round_index, num_workers=args.num_workers)
        test_sets: list[TestSet] = []
        if run.dist.is_main:
            names = [args.test_dataset] if within else args.test_datasets
            test_mode = "lq_hq_ref" if role.train_mode == "lq_hq_ref" else "lq_hq"
            test_sets = build_test_sets(args, names, test_mode, content_ids=test_ids,
                                        ref_folder=args.ref_test_dataset_path if test_mode == "lq_hq_ref" else None,
                                        ref_cache=run.ref_cache)
        if not checked:  # every image of this round's data (a first round covers whole datasets) before training
            datasets = [train_set, *(t.loader.dataset for t in test_sets)]
            run_folder.on_main(run.dist, lambda: run_folder.check_images(datasets))  # noqa: B023 (called at once)
            checked = True
        logger.info(f"round {round_index + 1}/{rounds}: {len(train_set)} training samples from "
                    f"{args.train_dataset}; testing on {[t.name for t in test_sets] or 'nothing'}")
        resumed = state if state and state.get("round", 0) == round_index else None
        summary = _train_round(run, role, build_model, train_loader, test_sets, round_index, rounds,
                               history, resumed, finished_rounds)
        finished_rounds.append(summary)
        state = None

    report = _final_report(finished_rounds, within)
    if run.dist.is_main:
        files.write_json(os.path.join(args.result_checkpoint_dir, "summary.json"), report)
        logger.info(report["text"])
    return report


def _load_resume(run: Run, role: Role, rounds: int) -> dict:
    args, logger = run.args, get_logger()
    path = run_folder.resume_path(args)
    state = ckpt.load_training_checkpoint(path)
    notes = run_folder.check_resume(args, state, role.kind, role.teacher)
    notes += run_folder.on_main(run.dist, lambda: run_folder.repair(args, state, role.kind, rounds)) or []
    for line in notes:
        logger.info(line)
    done = f"epoch {state['epoch'] + 1} trained, its evaluation left" if state.get("pending") is not None \
        else f"epoch {state['epoch']} done"
    logger.info(f"resuming from {path} (round {state.get('round', 0) + 1}, {done})")
    return state


def _round_suffix(round_index: int, rounds: int) -> str:
    return f"_r{round_index + 1}" if rounds > 1 else ""


def _train_round(run: Run, role: Role, build_model, train_loader, test_sets, round_index: int, rounds: int,
                 history: list[dict], resumed: dict | None, finished_rounds: list[dict]) -> dict:
    args, logger = run.args, get_logger()
    seed_everything(args.seed + round_index)
    model = build_model()
    lr, lr_ratio, start_epoch = args.lr, args.lr_ratio, 0
    best = {"score": float("-inf"), "epoch": None, "metrics": {}}
    per_dataset_best: dict[str, dict] = {}
    scaler = run.precision.scaler()
    pending = None  # the training statistics of an epoch whose evaluation failed
    if resumed:
        model.load_checkpoint(resumed["model"])
        lr, lr_ratio, start_epoch = resumed["lr"], resumed["lr_ratio"], resumed["epoch"] + 1
        best, per_dataset_best = resumed["best"], resumed["per_dataset_best"]
        pending = resumed.get("pending")
    optimizer = make_optimizer(model, lr, lr_ratio, args.weight_decay)
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
        ckpt.set_rng_state(resumed["rng"])
    net = model
    if run.dist.distributed:
        if run.device.type == "cuda" and not args.freeze_backbone_bn:
            # Train-mode BatchNorm over the whole global batch, as a single process would compute it.
            model.feature_extractor = nn.SyncBatchNorm.convert_sync_batchnorm(model.feature_extractor)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None)

    suffix = _round_suffix(round_index, rounds)
    last_metrics: dict = {}
    models_dir = args.model_checkpoint_dir
    teacher_print = run_folder.fingerprint(role.teacher) if role.teacher is not None else None

    def checkpoint(epoch_done: int, **extra) -> dict:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch_done, "round": round_index, "lr": lr, "lr_ratio": lr_ratio, "rng": ckpt.rng_state(),
            "args": ckpt.serializable_options(vars(args)), "role": role.kind, "teacher": teacher_print,
            "metrics": last_metrics, "best": best, "per_dataset_best": per_dataset_best, "history": history,
            "rounds": finished_rounds, **extra,
        }

    for epoch in range(start_epoch, args.epochs):
        if pending is not None:  # trained before its evaluation failed: only the evaluation is left
            stats, pending = pending, None
        else:
            try:
                stats = train_one_epoch(net, train_loader, optimizer, scaler, run, epoch, teacher=role.teacher,
                                        distillation_loss=getattr(args, "distillation_loss", "mse"),
                                        feature_loss_ratio=getattr(args, "feature_loss_ratio", 1.0),
                                        net_print=args.net_print,
                                        distill_all_diff=getattr(args, "distill_all_diff_features", False))
                if not all(bool(torch.isfinite(p).all()) for p in model.trainable_parameters()):
                    raise NonFiniteLossError(f"the weights became NaN or infinite in epoch {epoch}")
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"training stopped: {err} (try a lower --lr); nothing of this epoch "
                                         f"was saved, the checkpoints already in {models_dir} are kept") from None
        try:
            results = evaluate(model, test_sets, run, epoch, role.test_ref_key, args.use_fitting_prcc_srcc,
                               trained_higher_is_better=dataset_class(args.train_dataset).higher_is_better) \
                if run.dist.is_main else {}
        except Exception as err:  # a bad test image, a vanished file ...: keep the trained epoch
            path = os.path.join(models_dir, "last.pth")
            files.atomic_torch_save(checkpoint(epoch - 1, pending=stats), path)
            note = f"the trained epoch {epoch} is saved in {path}: fix the cause and continue with --resume"
            if isinstance(err, UserError):
                raise UserError(f"evaluation after epoch {epoch} failed: {err}\n{note}") from None
            logger.error(f"evaluation after epoch {epoch} failed; {note}")
            raise
        last_metrics = _plain(results)
        row = {"round": round_index + 1, "epoch": epoch, "lr": lr, "lr_ratio": lr_ratio, **stats}
        for name, m in last_metrics.items():
            row.update({f"{name}_srcc": m["srcc"], f"{name}_plcc": m["plcc"], f"{name}_krcc": m["krcc"]})
        history.append(row)
        improved = update_best(best, per_dataset_best, last_metrics, epoch)
        logger.info(f"round {round_index + 1} epoch {epoch}: loss {stats['loss']:.4f} "
                    f"train SRCC {stats['train_srcc']:.4f}  {_format_metrics(results)}  "
                    f"[{stats['samples_per_s']:.1f} samples/s, {100 * stats['data_share']:.0f}% waiting for data"
                    f"{_eval_rate(results)}]")

        lr, lr_ratio = next_schedule(lr, lr_ratio, epoch, args.update_opt_epoch)
        optimizer = make_optimizer(model, lr, lr_ratio, args.weight_decay)  # rebuilt each epoch, as the original
        if run.dist.is_main:
            # last.pth first: whatever fails after it, --resume restores the epoch and best files from it
            names = ["last.pth", f"{role.name}{suffix}_{epoch}.pth"] + ([f"best{suffix}.pth"] if improved else [])
            try:
                files.atomic_torch_save(checkpoint(epoch), *(os.path.join(models_dir, name) for name in names))
                files.write_csv(os.path.join(args.result_checkpoint_dir, "metrics.csv"), history)
            except UserError as err:
                raise UserError(f"{err} (training stopped after epoch {epoch}; {models_dir}/last.pth holds the "
                                "last epoch that could be saved: make room and continue with --resume)") from None
        if run.dist.distributed:
            dist.barrier()
    if resumed and start_epoch >= args.epochs:
        last_metrics = resumed["metrics"]
    return {"round": round_index + 1, "best_epoch": best["epoch"], "best": best["metrics"],
            "best_per_dataset": per_dataset_best, "last": last_metrics}


def _final_report(rounds: list[dict], within: bool) -> dict:
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
