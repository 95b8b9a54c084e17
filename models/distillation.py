"""The knowledge-distillation loss: which inner features of the student's difference encoder are pulled towards
the FR-teacher's, and the distance between them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import UserError

DISTILLATION_LOSSES = ("mse", "l1", "kldiv")


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
    if kind not in DISTILLATION_LOSSES:
        raise ValueError(f"unknown distillation loss {kind!r}: expected mse, l1 or kldiv")
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student features vs {len(teacher)} teacher features")
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        s, t = s.float(), t.detach().float()
        if kind == "mse":
            total = total + F.mse_loss(s, t)
        elif kind == "l1":
            total = total + F.l1_loss(s, t)
        else:
            total = total + F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1),
                                     reduction="batchmean", log_target=True)
    return total
