"""The NAR-student as a differentiable loss (`IQAScorer(as_loss=True)`): the same score as the inference path, the
true gradient, gradient ascent raises the score, a frozen network, autocast, and the documented example runs.

The ResNet-50 is slow on a CPU, so one scorer (patch 16, one crop, one repeat) is shared by the tests; gradcheck runs on
the scorer's differentiable path with a tiny float64 stand-in network put in place of the student.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tools.scorer
from common.errors import UserError
from dataloaders.sampling import crop_origins, independent_patches, normalize_patches
from models.DistillationIQA import DistillationIQANet
from tools.networks import training_set_in
from tools.scorer import IQAScorer, lower_is_better

ROOT = Path(__file__).resolve().parents[1]
PATCH = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=1, MLP_depth=1, distillation_layer=1, pretrained=False)
    for module in net.feature_extractor.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def scorer(net):
    reference = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 24, 20), dtype=np.uint8))
    return IQAScorer(net, reference.float() / 255, patch_size=PATCH, repeats=1, as_loss=True, channels_last=False)


def uint8_images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Float images in [0, 1] holding exact uint8 values, so that the inference path's uint8 conversion is lossless."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8)).float() / 255


def test_crop_origins_are_the_crops_of_independent_patches():
    img = np.random.default_rng(3).integers(0, 256, (30, 25, 3), dtype=np.uint8)
    origins = crop_origins(np.random.default_rng(7), img.shape, 8, 4)
    expected = independent_patches(img, np.random.default_rng(7), 8, 4)
    np.testing.assert_array_equal(np.stack([img[t:t + 8, left:left + 8] for t, left in origins]), expected)


def test_loss_score_equals_the_inference_score_on_the_same_crops(scorer):
    x = uint8_images(2, 24, 21, seed=1)
    origins = [[crop_origins(np.random.default_rng([scorer.seed, 1, r]), x.shape[2:], PATCH, 1)] * len(x)
               for r in range(scorer.repeats)]  # the inference path's crops
    plain = copy.copy(scorer)
    plain.as_loss = False
    expected = plain(x)  # the inference path
    got = scorer.differentiable_score(x.clone().requires_grad_(True), origins)
    assert got.grad_fn is not None and got.dtype == torch.float32 and got.shape == (2,)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-4, atol=1e-5)
    assert abs(float(expected[0] - expected[1])) > 1e-4  # two images, two scores


class TinyStudent(nn.Module):
    """A stand-in with the two methods the scorer calls: a conv encoder and a non-linear head on (lq, ref - lq)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=4)
        self.head = nn.Linear(2 * 2 * 2 * 4 * 4, 1)  # (lq, diff) x 2 patches x 2 channels x 4 x 4

    def encode_patches(self, patches: torch.Tensor) -> list[torch.Tensor]:
        b = patches.shape[0]
        return [torch.tanh(self.conv(patches.flatten(0, 1))).reshape(b, -1)]

    def forward_from_codes(self, lq_codes, ref_codes):
        diff = [torch.tanh(r - q) for r, q in zip(ref_codes, lq_codes)]
        return [], [], self.head(torch.cat(lq_codes + diff, dim=1)).squeeze(-1)


def test_gradcheck_through_crops_and_normalisation(scorer):
    torch.manual_seed(0)
    tiny = TinyStudent().double().requires_grad_(False)
    stand_in = copy.copy(scorer)
    stand_in.net, stand_in.self_patch_num = tiny, 2
    with torch.no_grad():
        stand_in._ref_codes = [tiny.encode_patches(normalize_patches(torch.cat([p, p], 1)).double())
                               for p in scorer.reference_patches]
    x = torch.rand(2, 3, 20, 18, dtype=torch.float64, requires_grad=True)
    origins = [[[(0, 0), (3, 2)], [(4, 1), (2, 2)]]]  # overlapping crops: their gradients add up
    assert torch.autograd.gradcheck(lambda z: stand_in.differentiable_score(z, origins), (x,), fast_mode=True)


def test_gradient_ascent_improves_and_leaves_the_network_untouched(scorer):
    assert scorer.lower_better is False  # kadid10k: higher is better
    buffers = {name: b.clone() for name, b in scorer.net.named_buffers()}
    direction = -1.0 if scorer.lower_better else 1.0
    x = uint8_images(1, PATCH, PATCH, seed=5)  # image == patch: the same crop at every call
    scores = []
    for _ in range(2):
        x.requires_grad_(True)
        score = scorer(x)
        score.sum().backward()
        scores.append(score.item())
        x = (x + direction * 1e-3 * x.grad.sign()).detach()
    with torch.no_grad():
        scores.append(float(scorer(x)))
    assert all(direction * (b - a) > 0 for a, b in zip(scores, scores[1:])), scores
    assert all(p.grad is None and not p.requires_grad for p in scorer.net.parameters())
    assert not any(m.training for m in scorer.net.modules())
    for name, b in scorer.net.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=0, atol=0)


def test_bf16_autocast_gives_float32_scores_and_finite_gradients(scorer):
    x = uint8_images(1, PATCH, PATCH, seed=6).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = scorer(x)
    scores.sum().backward()
    assert scores.dtype == torch.float32 and bool(torch.isfinite(scores).all())
    with torch.no_grad():
        assert not torch.equal(scores.detach(), scorer(x))  # the network really ran in bf16 (one crop position)
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_bad_and_small_inputs(scorer):
    with pytest.raises(UserError, match=r"float \[N, 3, H, W\] tensor .*got \[1, 3, 20, 20\] torch.uint8"):
        scorer(torch.zeros(1, 3, 20, 20, dtype=torch.uint8))
    with pytest.raises(UserError, match=r"batch \[1, 3, 10, 20\] is 20x10, smaller than the patch size 16"):
        scorer(torch.rand(1, 3, 10, 20))
    upscaling = copy.copy(scorer)
    upscaling.upscale = True
    x = torch.rand(1, 3, 10, 20, requires_grad=True)
    upscaling(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_lower_better_follows_the_training_set():
    assert training_set_in({"args": {"train_dataset": "live"}}, "kadid10k")[0] == "live"
    assert training_set_in({"model": {}}, "kadid10k")[0] == "kadid10k"  # the authors' files store no options
    assert lower_is_better("live") and lower_is_better("csiq")
    assert not lower_is_better("kadid10k") and not lower_is_better("koniq-10k")
    with pytest.raises(UserError, match="train_dataset 'nope': expected one of"):
        lower_is_better("nope")


def documented_example() -> str:
    """The python block of the README's "Use the student as a loss" section (or a docs/ page's)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text() if page.is_file() else ""
        heading = re.search(r"^#+ Use the student as a loss\s*$", text, re.M)
        if heading:
            return re.search(r"```python\n(.*?)```", text[heading.end():], re.S).group(1)
    raise AssertionError("no section 'Use the student as a loss' in README.md or docs/")


def test_the_documented_example_runs(scorer, monkeypatch, capsys):
    made = []

    def small_scorer(checkpoint, references, **options):  # the shared small student in place of the file
        made.append(options)
        return scorer

    monkeypatch.setattr(tools.scorer, "IQAScorer", small_scorer)
    namespace: dict = {}
    exec(compile(documented_example(), "example", "exec"), namespace)
    assert made and made[0]["as_loss"] is True
    trained = [m for m in namespace.values() if isinstance(m, nn.Module)]
    assert trained and all(p.grad is not None for m in trained for p in m.parameters())  # the loss reached them
    assert len(re.findall(r"step \d: mean score -?\d", capsys.readouterr().out)) == 3
