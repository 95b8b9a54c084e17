"""The state of a training round (weights, optimiser, schedule, best-on-test bookkeeping) and the checkpoint it
becomes: every key of this project's training checkpoints is written here and read back here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from common.log import get_logger
from models.DistillationIQA import DistillationIQANet
from tools import checkpoint as ckpt
from tools.epoch import make_optimizer


@dataclass
class RunRecord:
    """What a run keeps across epochs and rounds: one metrics.csv row per epoch, one summary per finished round,
    and what identifies the run in its checkpoints (role, options, the teacher's fingerprint)."""

    role: str  # 'teacher' or 'student'
    options: dict
    teacher_fingerprint: str | None = None
    history: list[dict] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)


def _no_best() -> dict:
    return {"score": float("-inf"), "epoch": None, "metrics": {}}


def resume_scaler(scaler: torch.amp.GradScaler, saved: Mapping | None, saved_precision: str | None,
                  precision: str) -> list[str]:
    """Continue `scaler` (this run's, for `precision`: 'fp32', 'fp16' or 'bf16') from a checkpoint's scaler
    state `saved`, written in `saved_precision` (None: not recorded). The state is loaded only when both scalers
    are enabled (fp16 on CUDA); otherwise `scaler` starts fresh. Returns the log line of a change of precision."""
    enabled = scaler.is_enabled()
    if enabled and saved:
        scaler.load_state_dict(saved)
    if saved_precision is None:  # written before the precision was recorded: only fp16 saved a scaler state
        saved_precision = "fp16" if saved else None
    if saved_precision == precision or (saved_precision is None and not enabled):
        return []
    before = f"was trained in {saved_precision}" if saved_precision else "records no precision (it was not fp16)"
    return [f"resume: the checkpoint {before}; this run continues in {precision}"
            + (" with a fresh GradScaler" if enabled and not saved else "")]


@dataclass
class TrainingState:
    """One round's training state. `epoch` is the last epoch whose training is done (-1 before the first)."""

    model: DistillationIQANet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    round_index: int
    lr: float
    lr_ratio: float
    weight_decay: float
    precision: str = "fp32"  # the resolved training precision: 'fp32', 'fp16' or 'bf16'
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epoch: int = -1
    best: dict = field(default_factory=_no_best)  # for best.pth: {"score", "epoch", "metrics"}
    per_dataset_best: dict[str, dict] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # the last evaluated epoch's
    pending: dict | None = None  # training statistics of an epoch whose evaluation failed

    @classmethod
    def start(cls, model: DistillationIQANet, scaler: torch.amp.GradScaler, *, round_index: int, lr: float,
              lr_ratio: float, weight_decay: float, precision: str = "fp32", device: torch.device | None = None,
              resumed: dict | None = None) -> TrainingState:
        """A fresh round, or the round saved in the training checkpoint `resumed` (weights, optimiser, scaler,
        schedule, bookkeeping and every RNG state). `precision` ('fp32', 'fp16', 'bf16') and `device` are the
        run's; a checkpoint of another precision continues in the run's, with a fresh scaler (logged)."""
        device = device or torch.device("cpu")
        if resumed is None:
            return cls(model, make_optimizer(model, lr, lr_ratio, weight_decay), scaler, round_index, lr, lr_ratio,
                       weight_decay, precision, device)
        model.load_checkpoint(resumed["model"])
        optimizer = make_optimizer(model, resumed["lr"], resumed["lr_ratio"], weight_decay)
        optimizer.load_state_dict(resumed["optimizer"])
        notes = resume_scaler(scaler, resumed.get("scaler"), resumed.get("precision"), precision)
        notes += ckpt.set_rng_state(resumed["rng"], device)
        for line in notes:
            get_logger().info(line)
        return cls(model, optimizer, scaler, round_index, resumed["lr"], resumed["lr_ratio"], weight_decay,
                   precision, device, epoch=resumed["epoch"], best=resumed["best"],
                   per_dataset_best=resumed["per_dataset_best"], metrics=resumed.get("metrics", {}),
                   pending=resumed.get("pending"))

    def rebuild_optimizer(self, lr: float, lr_ratio: float) -> None:
        """The next epoch's lr and lr ratio, with a new optimiser (as the original rebuilt it every epoch)."""
        self.lr, self.lr_ratio = lr, lr_ratio
        self.optimizer = make_optimizer(self.model, lr, lr_ratio, self.weight_decay)

    def checkpoint(self, record: RunRecord, *, pending: dict | None = None) -> dict:
        """The training checkpoint of this state (read back by `start` and by --resume's checks), every tensor
        on the CPU."""
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "precision": self.precision, "epoch": self.epoch,
            "round": self.round_index, "lr": self.lr, "lr_ratio": self.lr_ratio,
            "rng": ckpt.rng_state(self.device), "args": record.options, "role": record.role,
            "teacher": record.teacher_fingerprint, "metrics": self.metrics, "best": self.best,
            "per_dataset_best": self.per_dataset_best, "history": record.history, "rounds": record.rounds,
        }
        if pending is not None:
            state["pending"] = pending
        return ckpt.to_cpu(state)

    def summary(self) -> dict:
        """The round's entry in summary.json."""
        return {"round": self.round_index + 1, "best_epoch": self.best["epoch"], "best": self.best["metrics"],
                "best_per_dataset": self.per_dataset_best, "last": self.metrics}
