"""The shared loop: schedule, optimiser groups, KD loss, evaluation without autograd, batch invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import UserError
from dataloaders import build_dataset, build_loader
from models.distillation import feature_distillation_loss, select_distilled_features
from models.DistillationIQA import DistillationIQANet
from tools import epoch as engine_epoch
from tools.dataset_fixtures import make_ref_pool, make_tid2013
from tools.runtime import Run
from tools.utils import DistInfo, resolve_precision


def tiny_net(seed: int = 0) -> DistillationIQANet:
    torch.manual_seed(seed)
    return DistillationIQANet(self_patch_num=2, MLP_depth=1, distillation_layer=2, pretrained=False)


def test_schedule_is_the_originals_compounding_one():
    lr, ratio = 1e-3, 10.0
    seen = []
    for epoch in range(24):
        lr, ratio = engine_epoch.next_schedule(lr, ratio, epoch, update_opt_epoch=10)
        seen.append((lr, ratio))
    # epochs 0-9 unchanged; from epoch 10 the division by 10 compounds every epoch; 20+ by 100
    assert seen[9] == (1e-3, 10.0)
    assert seen[10][0] == pytest.approx(1e-4) and seen[11][0] == pytest.approx(1e-5)
    assert seen[20][0] == pytest.approx(1e-3 / 10**10 / 100)
    assert seen[20][1] == 10.0 and seen[21][1] == 1.0  # lr_ratio becomes 1 after epoch 20 (t > 20)


def test_optimizer_groups():
    net = tiny_net()
    opt = engine_epoch.make_optimizer(net, lr=2e-5, lr_ratio=10, weight_decay=5e-4)
    heads, backbone = opt.param_groups
    assert heads["lr"] == pytest.approx(2e-4) and backbone["lr"] == pytest.approx(2e-5)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in net.feature_extractor.parameters()}
    assert heads["weight_decay"] == 5e-4
    n_params = sum(1 for _ in net.parameters())
    assert len(heads["params"]) + len(backbone["params"]) == n_params


@pytest.mark.parametrize("kind", ["mse", "l1", "kldiv"])
def test_kd_loss_zero_for_equal_weights_positive_otherwise(kind):
    teacher, student = tiny_net(1).eval(), tiny_net(1).train()
    lq, ref, hq = (torch.randn(2, 2, 3, 32, 32) for _ in range(3))
    with torch.no_grad():
        t_diff, _, _ = teacher(lq, hq)
    student.eval()
    s_diff, _, _ = student(lq, hq)  # same weights, same inputs
    assert feature_distillation_loss(s_diff, t_diff, kind).item() == pytest.approx(0.0, abs=1e-6)
    s_diff, _, _ = student(lq, ref)  # the student's own (non-aligned) reference
    loss = feature_distillation_loss(s_diff, t_diff, kind)
    assert loss.item() > 0 and loss.requires_grad
    other = tiny_net(2).eval()
    o_diff, _, _ = other(lq, hq)
    assert feature_distillation_loss(o_diff, t_diff, kind).item() > 0
    assert len(s_diff) == 2  # distillation_layer 2 -> the last 2 blocks of the difference encoder


# The table of which difference-encoder steps the original's zip distils (MLP depth 9: the difference encoder
# has 18 blocks, the LQ encoder 9). Steps of the encoder: 0 = tokens after the rearrange, 1 = after the
# embedding, 2 + b = after block b.
ZIP_RULE_TABLE = {
    9: [2 + b for b in range(9, 18)],           # blocks 9-17 (9 features)
    11: [2 + b for b in range(7, 18)],          # blocks 7-17 (11)
    18: [2 + b for b in range(0, 11)],          # blocks 0-10 (11)
    20: [0, 1] + [2 + b for b in range(0, 9)],  # the rearranged input, the embedding, blocks 0-8 (11)
}


@pytest.mark.parametrize("d", sorted(ZIP_RULE_TABLE))
def test_kd_distils_what_the_originals_zip_kept(d):
    net = DistillationIQANet(self_patch_num=1, MLP_depth=9, distillation_layer=d, pretrained=False).eval()
    steps: list[torch.Tensor] = []  # every step output of the difference encoder, in call order
    hooks = [step.register_forward_hook(lambda m, i, out: steps.append(out)) for step in net.MLP_encoder_diff.mlp]
    lq, hq, ref = (torch.randn(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(3))
    try:
        with torch.no_grad():
            t_diff, t_lq, _ = net(lq, hq)   # the teacher's view
            teacher_steps = list(steps)
            steps.clear()
            s_diff, s_lq, _ = net(lq, ref)  # the student's view
            student_steps = list(steps)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(teacher_steps) == 2 + 18 + 2  # rearrange, embedding, 18 blocks, LayerNorm, mean
    teacher, student = select_distilled_features(t_diff, s_diff, t_lq, s_lq)
    expected = ZIP_RULE_TABLE[d]
    assert len(teacher) == len(student) == len(expected)
    for k, step in enumerate(expected):
        assert torch.equal(teacher[k], teacher_steps[step]) and torch.equal(student[k], student_steps[step])
    every_t, every_s = select_distilled_features(t_diff, s_diff, t_lq, s_lq, all_diff=True)
    assert len(every_t) == len(every_s) == min(d, 20)  # the option: every returned difference feature


def test_kd_with_nothing_to_distil_is_refused():
    with pytest.raises(UserError, match="--distillation_layer leaves no difference feature"):
        select_distilled_features([], [], [torch.zeros(1)], [torch.zeros(1)])


@pytest.fixture(scope="module")
def tid_loader_factory(tmp_path_factory):
    root = tmp_path_factory.mktemp("tid")
    make_tid2013(root / "TID2013", n_refs=2)
    refs = make_ref_pool(root / "val_HR", n=2)

    def factory(batch_size: int):
        dataset = build_dataset("tid2013", root / "TID2013", "lq_hq_ref", patch_size=32, patch_num=2,
                                ref_paths=refs, seed=3)
        return build_loader(dataset, batch_size, shuffle=False, seed=3)
    return factory


def _run() -> Run:
    device = torch.device("cpu")
    return Run(DistInfo(), device, resolve_precision("off", device))


def test_evaluation_in_batches_equals_one_at_a_time(tid_loader_factory):
    net = tiny_net(4)
    pred1, labels1 = engine_epoch.predict(net, tid_loader_factory(1), _run(), epoch=0, ref_key="ref")
    pred5, labels5 = engine_epoch.predict(net, tid_loader_factory(5), _run(), epoch=0, ref_key="ref")
    np.testing.assert_allclose(pred1, pred5, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels1, labels5)
    assert len(pred1) == len(tid_loader_factory(1).dataset)
    other_round, _ = engine_epoch.predict(net, tid_loader_factory(5), _run(), epoch=1, ref_key="ref")
    assert not np.allclose(pred5, other_round)  # a new round draws new crops and references


def test_test_loop_never_builds_autograd_graphs(tid_loader_factory):
    net = tiny_net(5)
    seen = []

    def hook(module, inputs, output):
        seen.append((torch.is_grad_enabled(), output[2].requires_grad, torch.is_inference_mode_enabled()))
    handle = net.register_forward_hook(hook)
    try:
        engine_epoch.predict(net.train(), tid_loader_factory(4), _run(), epoch=0, ref_key="ref")
    finally:
        handle.remove()
    assert seen and all(state == (False, False, True) for state in seen)
    assert not net.training  # evaluation switches to eval mode
