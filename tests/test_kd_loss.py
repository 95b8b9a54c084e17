"""The KD loss on hand-computed values, and one student training step with a recording stub teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.distillation import feature_distillation_loss
from tests.fakes import FixedBatches
from tools.epoch import Distillation, train_one_epoch
from tools.runtime import Run
from tools.utils import DistInfo, resolve_precision

# Two features of different sizes: per-feature means are summed (a mean over all elements pooled would differ).
STUDENT = [[[[1.0, 2.0], [3.0, 4.0]]],                      # [1, 2, 2]
           [[[0.0, 0.0]], [[1.0, -1.0]]]]                   # [2, 1, 2]
TEACHER = [[[[0.0, 2.0], [5.0, 4.0]]],
           [[[math.log(3.0), 0.0]], [[0.0, 0.0]]]]


def _flat(nested) -> list[float]:
    return [v for row in nested for v in (_flat(row) if isinstance(row, list) else [row])]


def hand_mse() -> float:
    # feature 0: differences 1, 0, -2, 0 -> (1 + 0 + 4 + 0) / 4; feature 1: -ln3, 0, 1, -1 -> (ln3^2 + 0 + 1 + 1) / 4
    return 5 / 4 + (math.log(3.0) ** 2 + 2) / 4


def hand_l1() -> float:
    return 3 / 4 + (math.log(3.0) + 2) / 4


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def hand_kldiv() -> float:
    """KL(teacher || student) of the softmax over the last (channel) axis, summed over rows, divided by the batch."""
    total = 0.0
    for s, t in zip(STUDENT, TEACHER):
        rows = [(srow, trow) for sb, tb in zip(s, t) for srow, trow in zip(sb, tb)]
        total += sum(_kl(_softmax(trow), _softmax(srow)) for srow, trow in rows) / len(s)  # batchmean: / b
    return total


def test_hand_kldiv_is_what_the_formula_says():
    # feature 1, batch item 0: teacher softmax (3/4, 1/4) vs student (1/2, 1/2); item 1: teacher (1/2, 1/2) vs
    # student (e^2, 1) / (e^2 + 1) — written out, so the helpers above are checked too.
    item0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    q = (math.e**2 / (math.e**2 + 1), 1 / (math.e**2 + 1))
    item1 = 0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1])
    feature0 = (_kl(_softmax([0.0, 2.0]), _softmax([1.0, 2.0])) + _kl(_softmax([5.0, 4.0]), _softmax([3.0, 4.0])))
    assert hand_kldiv() == pytest.approx(feature0 / 1 + (item0 + item1) / 2, rel=1e-12)


@pytest.mark.parametrize("kind, expected", [("mse", hand_mse), ("l1", hand_l1), ("kldiv", hand_kldiv)])
def test_feature_loss_hand_values(kind, expected):
    student = [torch.tensor(f, requires_grad=True) for f in STUDENT]
    teacher = [torch.tensor(f, requires_grad=True) for f in TEACHER]
    loss = feature_distillation_loss(student, teacher, kind)
    assert loss.item() == pytest.approx(expected(), rel=1e-6)
    loss.backward()
    assert all(s.grad is not None for s in student)
    assert all(t.grad is None for t in teacher)  # the teacher's features are detached


def test_kldiv_direction_and_axis_matter():
    """The hand values above would not catch a wrong direction or axis if those gave the same number: they don't."""
    reversed_direction = sum(
        sum(_kl(_softmax(srow), _softmax(trow)) for sb, tb in zip(s, t) for srow, trow in zip(sb, tb)) / len(s)
        for s, t in zip(STUDENT, TEACHER))
    assert abs(reversed_direction - hand_kldiv()) > 1e-3
    student = [torch.tensor(f) for f in STUDENT]
    teacher = [torch.tensor(f) for f in TEACHER]
    swapped = feature_distillation_loss(teacher, student, "kldiv").item()
    assert swapped == pytest.approx(reversed_direction, rel=1e-6)


# ---- one training step with stubs ---------------------------------------------------------------------
FEATURE_SHAPE = (2, 3, 4)


class RecordingNet(nn.Module):
    """Stands in for DistillationIQANet: records its inputs, returns fixed-pattern features and a prediction.

    Feature k of the difference list is `scale * (k + 1) + offset_k`, so every index has its own value and
    which pairs enter the KD loss changes the result. The teacher's features are leaves that require grad:
    only an explicit detach keeps gradient out of them, whatever `no_grad` the caller uses.
    """

    def __init__(self, n_diff: int, n_lq: int, seed: int, trainable: bool) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5), requires_grad=trainable)
        gen = torch.Generator().manual_seed(seed)
        self.offsets = [torch.randn(FEATURE_SHAPE, generator=gen) for _ in range(n_diff)]
        self.n_lq = n_lq
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.returned: list[torch.Tensor] = []

    def forward(self, lq: torch.Tensor, ref: torch.Tensor):
        self.calls.append((lq.clone(), ref.clone()))
        if self.scale.requires_grad:
            diff = [self.scale * (k + 1) + off for k, off in enumerate(self.offsets)]
        else:
            diff = [(self.scale.detach() * (k + 1) + off).requires_grad_() for k, off in enumerate(self.offsets)]
            self.returned = diff
        lq_feats = [torch.zeros(FEATURE_SHAPE) for _ in range(self.n_lq)]
        pred = self.scale * lq.mean(dim=(1, 2, 3, 4)) + ref.mean(dim=(1, 2, 3, 4))
        return diff, lq_feats, pred




def _batch() -> dict:
    gen = torch.Generator().manual_seed(11)
    shape = (2, 1, 3, 4, 4)
    return {"lq": torch.rand(shape, generator=gen), "hq": torch.rand(shape, generator=gen) + 2,
            "ref": torch.rand(shape, generator=gen) + 5, "label": torch.tensor([0.25, 4.0]),
            "index": torch.tensor([0, 1])}


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten().tolist(), b.detach().double().flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def _student_step(student: RecordingNet, teacher: RecordingNet, ratio: float) -> tuple[dict, dict]:
    batch = _batch()
    device = torch.device("cpu")
    run = Run(DistInfo(), device, resolve_precision("off", device))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_one_epoch(student, FixedBatches([batch]), optimizer, scaler, run, epoch=0,
                            kd=Distillation(teacher, loss="mse", ratio=ratio))
    return stats, batch


def _expected_l1(batch: dict) -> float:
    lq, ref = batch["lq"].double(), batch["ref"].double()
    pred = [0.5 * lq[i].mean().item() + ref[i].mean().item() for i in range(2)]
    return sum(abs(p - y) for p, y in zip(pred, batch["label"].tolist())) / 2


def test_student_step_routes_inputs_detaches_teacher_and_weights_the_kd_loss():
    """Teacher sees (LQ, aligned HQ), the student (LQ, non-aligned reference); loss = L1 + ratio x KD."""
    student = RecordingNet(n_diff=3, n_lq=3, seed=1, trainable=True)
    teacher = RecordingNet(n_diff=3, n_lq=3, seed=2, trainable=False)
    stats, batch = _student_step(student, teacher, ratio=0.3)
    assert len(student.calls) == 1 and len(teacher.calls) == 1
    torch.testing.assert_close(student.calls[0][0], batch["lq"], rtol=0, atol=0)
    torch.testing.assert_close(student.calls[0][1], batch["ref"], rtol=0, atol=0)
    torch.testing.assert_close(teacher.calls[0][0], batch["lq"], rtol=0, atol=0)
    torch.testing.assert_close(teacher.calls[0][1], batch["hq"], rtol=0, atol=0)
    assert all(t.grad is None for t in teacher.returned)  # no gradient reached the teacher's features
    assert teacher.scale.grad is None and student.scale.grad is not None
    # Here every list has 3 entries, so all 3 pairs are distilled under any pairing rule.
    kd = sum(_mse(0.5 * (k + 1) + s, 0.5 * (k + 1) + t)
             for k, (s, t) in enumerate(zip(student.offsets, teacher.offsets)))
    assert stats["feature_loss"] == pytest.approx(kd, rel=1e-5)
    assert stats["loss"] == pytest.approx(_expected_l1(batch) + 0.3 * kd, rel=1e-5)


# Relies on the original's zip rule: only the first n = min(len(teacher diff), len(student diff),
# len(teacher LQ), len(student LQ)) difference features are distilled. With 5 difference features and LQ lists
# of 4 (teacher) and 2 (student) entries, n = 2: features 0 and 1 only.
def test_student_step_distils_the_first_n_difference_features_zip_rule():
    student = RecordingNet(n_diff=5, n_lq=2, seed=3, trainable=True)
    teacher = RecordingNet(n_diff=5, n_lq=4, seed=4, trainable=False)
    stats, batch = _student_step(student, teacher, ratio=1.0)
    n = min(len(teacher.offsets), len(student.offsets), teacher.n_lq, student.n_lq)
    assert n == 2
    kd = sum(_mse(0.5 * (k + 1) + student.offsets[k], 0.5 * (k + 1) + teacher.offsets[k]) for k in range(n))
    assert stats["feature_loss"] == pytest.approx(kd, rel=1e-5)
    assert stats["loss"] == pytest.approx(_expected_l1(batch) + kd, rel=1e-5)
