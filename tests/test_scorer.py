"""The scoring API: same scores as the plain full forward on the same crops, any input form, batch invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import UserError
from dataloaders.sampling import independent_patches, normalize_patches, to_normalized_tensor
from models.DistillationIQA import DistillationIQANet
from tools.dataset_fixtures import make_ref_pool, write_image
from tools.scorer import IQAScorer


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=2, MLP_depth=1, distillation_layer=2, pretrained=False)
    # non-trivial BatchNorm statistics, so that folding them into the convolutions is really tested
    for module in net.feature_extractor.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.8, 1.2)
    return net.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer")
    refs = make_ref_pool(root / "refs", n=2, size=(80, 64))
    lqs = [write_image(root / f"lq{i}.png", (60 + 4 * i, 48), variant=10 + i) for i in range(3)]
    return refs, lqs


def plain_scores(net, scorer, paths, repeats):
    """Both branches through the unmodified network, batch 1, on the scorer's crops."""
    out = []
    with torch.no_grad():
        for path in paths:
            img = np.asarray(Image.open(path).convert("RGB"))
            total = 0.0
            for r in range(repeats):
                rng = np.random.default_rng([scorer.seed, 1, r])
                lq = to_normalized_tensor(independent_patches(img, rng, scorer.patch_size, 2))[None]
                total += float(net(lq, normalize_patches(scorer.reference_patches[r]))[2])
            out.append(total / repeats)
    return np.array(out)


def test_fast_path_equals_plain_forward(net, images):
    refs, lqs = images
    scorer = IQAScorer(net, refs, patch_size=32, repeats=3, batch_size=2, seed=4)
    np.testing.assert_allclose(scorer.score(lqs), plain_scores(net, scorer, lqs, 3), rtol=1e-4, atol=1e-5)
    assert net.feature_extractor.bn1.__class__.__name__ == "BatchNorm2d"  # the caller's network is untouched


def test_paths_pil_and_tensors_give_the_same_score(net, images):
    refs, lqs = images
    scorer = IQAScorer(net, refs, patch_size=32, repeats=2)
    pil = Image.open(lqs[0])
    tensor = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).float() / 255
    by_path, by_pil, by_tensor = scorer.score(lqs[0]), scorer.score(pil), scorer.score(tensor)
    np.testing.assert_allclose(by_path, by_pil, rtol=1e-6)
    np.testing.assert_allclose(by_path, by_tensor, rtol=1e-5)
    assert by_path.shape == (1,)


def test_scores_do_not_depend_on_batching(net, images):
    refs, lqs = images
    together = IQAScorer(net, refs, patch_size=32, repeats=2, batch_size=3).score(lqs)
    alone = np.concatenate([IQAScorer(net, refs, patch_size=32, repeats=2, batch_size=1).score(p) for p in lqs])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(together, 6))) == 3  # different images, different scores


def test_reference_branch_runs_once_per_repeat(net, images, monkeypatch):
    refs, lqs = images
    scorer = IQAScorer(net, refs, patch_size=32, repeats=3, batch_size=2)
    calls = []
    original = scorer.net.encode_patches
    monkeypatch.setattr(scorer.net, "encode_patches", lambda x: calls.append(x.shape[0]) or original(x))
    scorer.score(lqs + lqs)  # 6 images -> 3 batches of 2, for each of 3 repeats; no reference encoding
    assert calls == [2] * 9


def test_seed_decides_the_crops(net, images):
    refs, lqs = images
    a = IQAScorer(net, refs, patch_size=32, repeats=2, seed=1).score(lqs)
    b = IQAScorer(net, refs, patch_size=32, repeats=2, seed=1).score(lqs)
    c = IQAScorer(net, refs, patch_size=32, repeats=2, seed=2).score(lqs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_from_checkpoint_equals_a_full_build(net, tmp_path, images):
    refs, lqs = images
    torch.manual_seed(1)
    full = DistillationIQANet(self_patch_num=2, pretrained=False).eval()  # the released depth (9)
    path = tmp_path / "student.pth"
    torch.save(full.state_dict(), path)
    from_file = IQAScorer(path, refs, self_patch_num=2, patch_size=32, repeats=1)
    assert not any(p.is_meta for p in from_file.net.parameters())
    np.testing.assert_allclose(from_file.score(lqs), IQAScorer(full, refs, patch_size=32, repeats=1).score(lqs),
                               rtol=1e-6)
    shallow = tmp_path / "shallow.pth"
    torch.save(net.state_dict(), shallow)
    with pytest.raises(UserError, match="missing keys"):  # the sizes are still checked
        IQAScorer(shallow, refs, self_patch_num=2, patch_size=32)


def test_bad_inputs_are_named(net, images, tmp_path):
    refs, lqs = images
    scorer = IQAScorer(net, refs, patch_size=32, repeats=1)
    with pytest.raises(UserError, match=r"\[3, H, W\] tensor"):
        scorer.score(torch.rand(5, 40, 40))
    with pytest.raises(UserError, match="small.png is 20x20, smaller than the patch size 32"):
        scorer.score(write_image(tmp_path / "small.png", (20, 20)))
    with pytest.raises(UserError, match="student checkpoint not found"):
        IQAScorer(tmp_path / "none.pth", refs)
    with pytest.raises(UserError, match="no reference images"):
        IQAScorer(net, [], patch_size=32)


def test_missing_default_checkpoint_says_where_one_comes_from(tmp_path, monkeypatch, capsys):
    """A fresh clone without the authors' file: the single-image script's first and only line says where a
    student checkpoint comes from (before it looks for references), exit status 2."""
    import test_DistillationIQA_single
    from common.errors import run_cli
    from option_train_DistillationIQA import set_single_args

    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "photo.png", (64, 64))
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: test_DistillationIQA_single.main(set_single_args(["--lq", "photo.png"])))
    assert exited.value.code == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert "student checkpoint not found: ./model_zoo/NAR_student_cross_dataset.pth" in line
    for source in ("model_zoo/", "models/best.pth", "demo_output/student/models/last.pth"):
        assert source in line
