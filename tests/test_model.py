"""The network against the authors' checkpoint format (tests/data/state_dict_keys.tsv)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.DistillationIQA import UNUSED_CHECKPOINT_KEYS, DistillationIQANet

KEYS_FILE = Path(__file__).parent / "data" / "state_dict_keys.tsv"


def checkpoint_rows() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, role = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), role.strip()))
    return rows


def released_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    """A state dict with every row of the released format (random values), as the authors' files are."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, _ in checkpoint_rows():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def test_state_dict_matches_released_format(default_net):
    expected = {key: shape for key, shape, role in checkpoint_rows() if role in ("used", "buffer")}
    got = {key: tuple(value.shape) for key, value in default_net.state_dict().items()}
    assert got == expected
    assert len(expected) == 665


def test_unused_keys_are_exactly_the_files_unused_rows():
    assert {key for key, _, role in checkpoint_rows() if role == "unused"} == set(UNUSED_CHECKPOINT_KEYS)


def test_released_checkpoint_loads_with_all_rows(default_net, tmp_path):
    state = released_state_dict()
    path = tmp_path / "NAR_student_cross_dataset.pth"
    torch.save(state, path)
    net = DistillationIQANet(pretrained=False)
    net.load_checkpoint(path)
    own = net.state_dict()
    for key in own:
        assert torch.equal(own[key], state[key]), key


def test_module_prefixes_are_accepted(tmp_path):
    state = {f"module.{k}": v for k, v in released_state_dict(seed=3).items()}
    net = DistillationIQANet(pretrained=False)
    net.load_checkpoint(state)
    assert torch.equal(net.state_dict()["regressor.l2.weight"], state["module.regressor.l2.weight"])


def test_project_checkpoint_dict_loads(default_net, tmp_path):
    path = tmp_path / "last.pth"
    torch.save({"model": default_net.state_dict(), "epoch": 3, "metrics": {"live": {"srcc": 0.5}}}, path)
    net = DistillationIQANet(pretrained=False)
    checkpoint = net.load_checkpoint(path)
    assert checkpoint["epoch"] == 3
    assert torch.equal(net.state_dict()["lda1_process.0.weight"], default_net.state_dict()["lda1_process.0.weight"])


def test_trainable_parameters_exclude_backbone(default_net):
    trainable = {id(p) for p in default_net.trainable_parameters()}
    backbone = list(default_net.feature_extractor.parameters())
    assert backbone and all(not p.requires_grad for p in backbone)
    assert not trainable & {id(p) for p in backbone}
    named = dict(default_net.named_parameters())
    expected = {id(p) for n, p in named.items() if not n.startswith("feature_extractor.")}
    assert trainable == expected
    assert all(p.requires_grad for p in default_net.trainable_parameters())


@pytest.mark.parametrize("distillation_layer, n_diff, n_lq", [(9, 9, 9), (18, 18, 11)])
def test_forward_shapes_and_inner_feature_counts(distillation_layer, n_diff, n_lq):
    torch.manual_seed(0)
    net = DistillationIQANet(distillation_layer=distillation_layer, pretrained=False).eval()
    lq, ref = torch.randn(2, 10, 3, 32, 32), torch.randn(2, 10, 3, 32, 32)
    with torch.no_grad():
        diff_inner, lq_inner, pred = net(lq, ref)
    assert pred.shape == (2,)
    assert len(diff_inner) == n_diff and len(lq_inner) == n_lq
    assert all(f.shape == (2, 49, 256) for f in diff_inner)
    # With 18 requested and only 9 LQ blocks, the LQ slice starts at the tokens (2560 channels).
    assert lq_inner[0].shape == ((2, 49, 2560) if n_lq == 11 else (2, 49, 256))


def test_inner_features_are_the_last_blocks_before_the_final_norm(small_net):
    lq, ref = torch.randn(1, 2, 3, 32, 32), torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        diff_inner, _, _ = small_net(lq, ref)
        codes_lq, codes_ref = small_net.encode_patches(lq), small_net.encode_patches(ref)
        x = torch.cat([r - q for r, q in zip(codes_ref, codes_lq)], 1)
        steps = []
        for step in small_net.MLP_encoder_diff.mlp:
            x = step(x)
            steps.append(x)
    # depth 4 for the diff encoder: steps = tokens, embed, 4 blocks, norm, mean; last 4 before the norm.
    assert len(diff_inner) == 4
    for got, want in zip(diff_inner, steps[2:6]):
        assert torch.equal(got, want)


def test_prediction_uses_lq_then_diff_code(small_net):
    """pred = l2(l1(cat(lq_code, diff_code))), and the difference is reference minus LQ."""
    lq, ref = torch.randn(2, 2, 3, 32, 32), torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        _, _, pred = small_net(lq, ref)
        q, r = small_net.encode_patches(lq), small_net.encode_patches(ref)
        lq_map = torch.cat(q, 1)
        diff_map = torch.cat([b - a for a, b in zip(q, r)], 1)
        assert lq_map.shape == (2, 4 * 2 * 64, 7, 7)
        _, lq_code = small_net.MLP_encoder_lq(lq_map)
        _, diff_code = small_net.MLP_encoder_diff(diff_map)
        reg = small_net.regressor
        expected = reg.l2(reg.l1(torch.cat([lq_code, diff_code], 1))).squeeze(-1)
    torch.testing.assert_close(pred, expected)


def test_patches_to_channels_is_patch_major(small_net):
    """Stage maps [b*p, 64, 7, 7] are viewed as [b, p*64, 7, 7]: channel block j belongs to patch j."""
    lq = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        codes = small_net.encode_patches(lq)
        single = small_net.encode_patches(lq[:, 1:2].expand(1, 2, 3, 32, 32))
    torch.testing.assert_close(codes[0][:, 64:128], single[0][:, 64:128])


def test_batch_composition_does_not_change_eval_scores(small_net):
    lq, ref = torch.randn(3, 2, 3, 32, 32), torch.randn(3, 2, 3, 32, 32)
    with torch.no_grad():
        together = small_net(lq, ref)[2]
        alone = torch.stack([small_net(lq[i:i + 1], ref[i:i + 1])[2][0] for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_shared_reference_codes_equal_full_forward(small_net):
    """The fast path (reference branch once, broadcast over a batch) gives the plain forward's scores."""
    lq, ref = torch.randn(3, 2, 3, 32, 32), torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        fast = small_net.forward_from_codes(small_net.encode_patches(lq), small_net.encode_patches(ref))[2]
        plain = small_net(lq, ref.expand(3, -1, -1, -1, -1))[2]
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def _std_tolerance(n: int, uniform: bool = False) -> float:
    """Relative tolerance on a sample std of n draws: 3 %, or 5 standard errors for small tensors.

    The standard error of a sample std is sqrt((kurtosis - 1) / (4 n)) relative: 1/sqrt(2n) for a normal
    distribution (kurtosis 3), sqrt(0.2/n) for a uniform one (kurtosis 1.8).
    """
    return max(0.03, 5 * ((0.8 if uniform else 2.0) / (4 * n)) ** 0.5)


def _check_kaiming(name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Kaiming-normal (fan_in, gain sqrt(2)) x 0.1: std 0.1 * sqrt(2 / fan_in), mean 0, normal; bias 0."""
    fan_in = weight[0].numel()
    expected = 0.1 * (2 / fan_in) ** 0.5
    assert weight.std().item() == pytest.approx(expected, rel=_std_tolerance(weight.numel())), name
    assert abs(weight.mean().item()) < 5 * expected / weight.numel() ** 0.5, name
    if weight.numel() >= 4096:  # normal tails, not a uniform init of that std (P(max < 3 std) < 1e-4 here)
        assert weight.abs().max().item() > 3 * expected, name
    assert bias is not None and torch.count_nonzero(bias) == 0, name


def _check_torch_default_conv1d(name: str, conv: torch.nn.Conv1d) -> None:
    """PyTorch's default: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)."""
    fan_in = conv.in_channels * conv.kernel_size[0]
    bound = fan_in**-0.5
    for what, tensor in (("weight", conv.weight), ("bias", conv.bias)):
        assert tensor.abs().max().item() <= bound, f"{name}.{what}"
        assert tensor.std().item() == pytest.approx((3 * fan_in) ** -0.5,
                                                    rel=_std_tolerance(tensor.numel(), uniform=True)), f"{name}.{what}"
    assert conv.weight.abs().max().item() > 0.95 * bound, name  # fills the interval (uniform, not normal)


def test_initialisation_follows_the_original(default_net):
    """Every head: lda convs, both mixers (embedding, channel-mixing Linears), regressor; token-mixing Conv1d."""
    checked = {"kaiming": 0, "conv1d": 0}
    for head in [f"lda{i}_process" for i in range(1, 5)] + ["MLP_encoder_lq", "MLP_encoder_diff", "regressor"]:
        for name, module in getattr(default_net, head).named_modules():
            full = f"{head}.{name}"
            if isinstance(module, torch.nn.Conv1d):
                _check_torch_default_conv1d(full, module)
                checked["conv1d"] += 1
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                _check_kaiming(full, module.weight, module.bias)
                checked["kaiming"] += 1
            elif isinstance(module, torch.nn.LayerNorm):
                assert torch.all(module.weight == 1) and torch.all(module.bias == 0), full
    # 4 lda convs; per mixer an embedding and 2 Linears per block (9 + 18 blocks); regressor l1, l2.
    # Token mixing: 2 Conv1d per block.
    assert checked == {"kaiming": 4 + 2 + 2 * 27 + 2, "conv1d": 2 * 27}
    for module in default_net.feature_extractor.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_train_mode_backbone_sees_lq_and_reference_as_separate_batches():
    """Train-mode BatchNorm normalises the LQ batch and the reference batch each with its own statistics."""
    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=2, MLP_depth=1, distillation_layer=1, pretrained=False).train()
    lq, ref = torch.rand(2, 2, 3, 32, 32), 3 * torch.rand(2, 2, 3, 32, 32) + 1  # two different distributions
    with torch.no_grad():
        pred = net(lq, ref)[2]
        separate = net.forward_from_codes(net.encode_patches(lq), net.encode_patches(ref))[2]
        both = net.encode_patches(torch.cat([lq, ref]))  # one batch: shared statistics
        joint = net.forward_from_codes([c[:2] for c in both], [c[2:] for c in both])[2]
    torch.testing.assert_close(pred, separate, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(pred, joint, rtol=1e-3, atol=1e-4)  # the test can tell the two apart


def test_wrong_input_shape_is_reported(small_net):
    with pytest.raises(ValueError, match="self_patch_num=2"):
        small_net(torch.randn(1, 3, 3, 32, 32), torch.randn(1, 3, 3, 32, 32))


def test_backbone_bn_eval_option_keeps_running_statistics():
    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=1, MLP_depth=1, distillation_layer=1, pretrained=False,
                             backbone_bn_eval=True)
    net.train()
    assert not net.feature_extractor.bn1.training and net.MLP_encoder_lq.training
    before = net.feature_extractor.bn1.running_mean.clone()
    net(torch.randn(2, 1, 3, 32, 32), torch.randn(2, 1, 3, 32, 32))
    assert torch.equal(before, net.feature_extractor.bn1.running_mean)
    faithful = DistillationIQANet(self_patch_num=1, MLP_depth=1, distillation_layer=1, pretrained=False).train()
    assert faithful.feature_extractor.bn1.training


def test_pretrained_path_loads_local_backbone_weights(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(5)
    reference = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    net = DistillationIQANet(self_patch_num=1, MLP_depth=1, distillation_layer=1, pretrained=str(path))
    assert torch.equal(net.feature_extractor.layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
