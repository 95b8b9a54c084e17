"""One epoch: the optimiser and its schedule, a training pass (with the KD loss for the student), prediction
and evaluation on the test sets."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from common.errors import UserError
from common.log import get_logger
from dataloaders import set_loader_epoch
from dataloaders.sampling import to_model_input
from models.distillation import feature_distillation_loss, select_distilled_features
from models.DistillationIQA import DistillationIQANet
from tools import collectives
from tools.metrics import compute_metrics, oriented
from tools.runtime import Run
from tools.utils import DistInfo

LR_RATIO_RESET_EPOCH = 20  # after epoch t > 20 (0-based) the non-backbone lr multiplier becomes 1


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


# ---- training ---------------------------------------------------------------------------------------
class NonFiniteLossError(UserError):
    """Training diverged: the loss (or a weight) is NaN or infinite."""


@dataclass
class Distillation:
    """The student's KD: the frozen FR-teacher and how its difference features are distilled."""

    teacher: nn.Module
    loss: str = "mse"
    ratio: float = 1.0
    all_diff: bool = False

    def feature_loss(self, batch: dict, lq: Tensor, diff_inner: Sequence[Tensor], lq_inner: Sequence[Tensor],
                     device: torch.device) -> Tensor:
        """The KD feature loss of one batch: the teacher sees the LQ patches with their aligned HQ patches."""
        with torch.no_grad():
            teacher_diff, teacher_lq, _ = self.teacher(lq, to_model_input(batch["hq"], device))
        distilled_t, distilled_s = select_distilled_features(teacher_diff, diff_inner, teacher_lq, lq_inner,
                                                             all_diff=self.all_diff)
        return feature_distillation_loss(distilled_s, distilled_t, self.loss)


def _training_loss(model: nn.Module, batch: dict, run: Run, kd: Distillation | None) -> tuple[Tensor, Tensor, Tensor,
                                                                                              Tensor | None]:
    """(loss, prediction, label, KD feature loss or None) of one batch: L1 to the label (+ ratio x KD)."""
    lq, label = to_model_input(batch["lq"], run.device), to_model_input(batch["label"], run.device).float()
    ref = to_model_input(batch["hq" if kd is None else "ref"], run.device)
    with run.precision.autocast():
        diff_inner, lq_inner, pred = model(lq, ref)
        loss = F.l1_loss(pred.float(), label)
        feature_loss = kd.feature_loss(batch, lq, diff_inner, lq_inner, run.device) if kd is not None else None
        if feature_loss is not None:
            loss = loss + kd.ratio * feature_loss
    return loss, pred, label, feature_loss


LOSS_READ_EVERY = 50  # training steps between two reads of the losses from the device (host synchronisations)


def _read_losses(pending: list[Tensor], losses: list[float], feature_losses: list[float], epoch: int) -> None:
    """Move the losses of the steps since the last read ([loss] or [loss, KD feature loss] per step) from the
    device, in one transfer, onto `losses` and `feature_losses`; a NaN or infinite loss stops the run, naming its
    iteration (`losses` holds one entry per step read before it)."""
    rows = torch.stack(pending).cpu().tolist() if pending else []
    pending.clear()
    for row in rows:
        if not math.isfinite(row[0]):
            raise NonFiniteLossError(f"the loss is {row[0]} at epoch {epoch}, iteration {len(losses) + 1}")
        losses.append(row[0])
        feature_losses.extend(row[1:])


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    run: Run, epoch: int, *, kd: Distillation | None = None, net_print: int = 2000) -> dict:
    """One pass over `loader`. Without `kd`: the FR-teacher (LQ vs aligned HQ). With it: the student (LQ vs
    non-aligned reference) plus the KD loss. Returns loss, train SRCC, samples/s and the share of time spent
    waiting for data (and the mean KD feature loss for the student).

    The losses and predictions stay on the device: the host reads them every `LOSS_READ_EVERY` steps (and at
    the `net_print` log lines), so the device is not made to wait each step. An enabled fp16 GradScaler still
    synchronises each step (it checks the gradients for infinities before the optimiser step)."""
    model.train()
    set_loader_epoch(loader, epoch)
    losses, feature_losses, preds, labels = [], [], [], []
    pending: list[Tensor] = []
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=None if run.dist.is_main else True, leave=False)
    data_time, start = 0.0, time.perf_counter()
    tick = start
    for step, batch in enumerate(bar, start=1):
        data_time += time.perf_counter() - tick
        loss, pred, _, feature_loss = _training_loss(model, batch, run, kd)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        pending.append(torch.stack([loss.detach().float(), feature_loss.detach().float()])
                       if feature_loss is not None else loss.detach().float().reshape(1))
        preds.append(pred.detach().float())
        labels.append(torch.as_tensor(batch["label"]).float())
        if step % LOSS_READ_EVERY == 0 or step % net_print == 0:
            _read_losses(pending, losses, feature_losses, epoch)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % net_print == 0:
            get_logger().info(f"epoch {epoch} iter {step}: loss {np.mean(losses[-net_print:]):.4f}")
        tick = time.perf_counter()
    _read_losses(pending, losses, feature_losses, epoch)
    local_preds = torch.cat(preds).cpu() if preds else torch.zeros(0)
    elapsed = time.perf_counter() - start  # after the reads above, which waited for the device
    pred_all, label_all = _gather([local_preds], run.dist), _gather(labels, run.dist)
    result = {"loss": collectives.mean_across(losses, run.dist),
              "train_srcc": compute_metrics(pred_all, label_all, fit=False)["srcc"] if len(pred_all) > 1
              else float("nan"),
              "samples_per_s": len(pred_all) / elapsed if elapsed else float("nan"),
              "data_share": data_time / elapsed if elapsed else float("nan")}
    if kd is not None:
        result["feature_loss"] = collectives.mean_across(feature_losses, run.dist)
    return result


def _gather(parts: list[Tensor], info: DistInfo) -> np.ndarray:
    """Every rank's values of `parts` (float32), in rank order."""
    return collectives.gather_1d(torch.cat(parts) if parts else torch.zeros(0), info).numpy()


# ---- evaluation -------------------------------------------------------------------------------------
@dataclass
class TestSet:
    """One test dataset's loader, and its label direction."""

    __test__ = False  # not a pytest test class
    name: str
    loader: object
    higher_is_better: bool


@torch.inference_mode()
def predict(model: nn.Module, loader, run: Run, epoch: int, ref_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image predictions (mean over the dataset's repeats) and labels, in dataset order, on every rank.

    Under torchrun each rank predicts its share of the batches (see `dataloaders.ShardedBatchSampler`) and the
    shares are gathered in dataset order, so the result is that of one process, number for number. Runs in fp32
    unless the run asks for mixed-precision evaluation (`Run.eval_precision`)."""
    pred, order = _predict_share(model, loader, run, epoch, ref_key)
    pred = collectives.gather_array(pred, run.dist)
    order = collectives.gather_array(order, run.dist)
    order, first = np.unique(order, return_index=True)  # dataset order; a sample predicted twice counts once
    pred = pred[first]
    samples = loader.dataset.samples
    per_image: dict[Path, list[float]] = {}
    label_of: dict[Path, float] = {}
    for i, p in zip(order, pred):
        sample = samples[int(i)]
        per_image.setdefault(sample.lq_path, []).append(float(p))
        label_of[sample.lq_path] = float(sample.label)
    keys = list(per_image)
    return np.array([np.mean(per_image[k]) for k in keys]), np.array([label_of[k] for k in keys])


def _predict_share(model: nn.Module, loader, run: Run, epoch: int, ref_key: str) -> tuple[np.ndarray, np.ndarray]:
    """This rank's predictions (float64) and their sample indices (int64). If any rank fails, every rank stops:
    the failing one with its error, the others with one line pointing to it (none waits for the others)."""
    model.eval()
    set_loader_epoch(loader, epoch)
    precision = run.evaluation_precision()
    preds, indices = [], []
    failure = None
    try:
        for batch in loader:
            lq, ref = to_model_input(batch["lq"], run.device), to_model_input(batch[ref_key], run.device)
            with precision.autocast():
                _, _, pred = model(lq, ref)
            preds.append(pred.float().reshape(-1))  # read from the device once, after the last batch
            indices.append(torch.as_tensor(batch["index"], dtype=torch.int64).reshape(-1))
    except Exception as err:  # re-raised below, after telling the other ranks
        failure = err
    if collectives.any_rank(failure is not None, run.dist):
        if failure is not None:
            raise failure
        raise UserError("evaluation failed in another process of this torchrun (its error is in its output)")
    pred = torch.cat(preds).cpu() if preds else torch.zeros(0)  # an empty share: a rank with no batch
    order = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
    return pred.numpy().astype(np.float64), order.numpy()


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


def images_per_s(metrics: dict) -> float:
    """Evaluation throughput of one test set's results (image crop sets scored per second)."""
    return metrics["images"] / metrics["seconds"] if metrics["seconds"] else float("nan")
