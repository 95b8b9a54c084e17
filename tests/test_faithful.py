"""Evaluation and training as the original's numbers were made: orientation by the training labels,
best-epoch criterion, fp32 evaluation, the teacher's test-time augmentation, the KD feature rule in the loop,
the student's training set, and the test scripts on command lines written for the original."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import option_train_DistillationIQA as student_options
import option_train_DistillationIQA_FR as teacher_options
from common.errors import UserError
from dataloaders import build_dataset, build_loader, set_loader_epoch
from dataloaders.sampling import denormalize, to_model_input
from models.DistillationIQA import DistillationIQANet
from tools import engine
from tools.data import build_test_sets, data_options
from tools.dataset_fixtures import make_kadid, make_live, make_ref_pool, make_tid2013, write_image
from tools.epoch import Distillation, TestSet, evaluate, make_optimizer, predict, train_one_epoch
from tools.networks import training_set_of
from tools.runtime import Run, setup_run
from tools.utils import DistInfo, resolve_precision

CPU = torch.device("cpu")


def blue(path: Path) -> int:
    """The fixtures' image identity: the blue value of the pixel (0, 0)."""
    return int(np.asarray(Image.open(path).convert("RGB"))[0, 0, 2])


class LookupModel(nn.Module):
    """A stand-in for a trained network: predicts from each image's identity (its blue value)."""

    def __init__(self, scores: dict[int, float]) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, lq: torch.Tensor, ref: torch.Tensor):
        ids = denormalize(lq[:, 0])[:, 2, 0, 0].round().long().tolist()
        return [], [], torch.tensor([self.scores[i] for i in ids], dtype=torch.float32)


@pytest.fixture(scope="module")
def live_and_mos_twin(tmp_path_factory):
    """A LIVE-format dataset (DMOS, lower is better) and a TID2013-format twin of the same images with
    MOS = 100 - DMOS (higher is better)."""
    root = tmp_path_factory.mktemp("twin")
    make_live(root / "LIVE", n_refs=3)
    live = build_dataset("live", root / "LIVE", "lq_hq", patch_size=16, patch_num=1)
    twin = root / "TID2013"
    lines, dmos = [], {}
    for j, sample in enumerate(live.samples):
        rid = f"{sample.content_id + 1:02d}"
        name = f"i{rid}_{j + 1:02d}_1.bmp"
        (twin / "distorted_images").mkdir(parents=True, exist_ok=True)
        (twin / "reference_images").mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.lq_path, twin / "distorted_images" / name)
        shutil.copy(sample.hq_path, twin / "reference_images" / f"I{rid}.BMP")
        lines.append(f"{100 - sample.label} {name}")
        dmos[blue(sample.lq_path)] = sample.label
    (twin / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    assert len(dmos) == len(live.samples) >= 6  # every image identifiable
    return root, dmos


def twin_test_sets(root: Path) -> list[TestSet]:
    out = []
    for name, folder in (("live", "LIVE"), ("tid2013", "TID2013")):
        dataset = build_dataset(name, root / folder, "lq_hq", patch_size=16, patch_num=1)
        out.append(TestSet(name, build_loader(dataset, 4, shuffle=False), dataset.higher_is_better))
    return out


def cpu_run(amp: str = "off", eval_amp: str = "off") -> Run:
    return Run(DistInfo(), CPU, resolve_precision(amp, CPU),
                      resolve_precision(eval_amp, CPU))


@pytest.mark.parametrize("trained_on", ["live", "tid2013"])
def test_a_model_that_ranks_right_reads_positive_on_both_label_directions(live_and_mos_twin, trained_on):
    root, dmos = live_and_mos_twin
    # a perfect model predicts in its training labels' direction: DMOS if trained on LIVE, MOS on the twin
    labels = dmos if trained_on == "live" else {k: 100 - v for k, v in dmos.items()}
    results = evaluate(LookupModel(labels), twin_test_sets(root), cpu_run(), 0, "hq",
                              trained_higher_is_better=trained_on == "tid2013")
    for name in ("live", "tid2013"):
        assert results[name]["srcc"] == pytest.approx(1.0) and results[name]["krcc"] == pytest.approx(1.0)
        assert results[name]["plcc"] > 0.9


@pytest.mark.parametrize("trained_on", ["live", "tid2013"])
def test_best_epoch_is_the_best_for_both_label_directions(live_and_mos_twin, trained_on):
    """Epoch 0 is noisy, epoch 1 ranks perfectly, epoch 2 ranks backwards: best.pth and every per-dataset best
    must be epoch 1, whatever the direction of the training labels."""
    root, dmos = live_and_mos_twin
    right = dmos if trained_on == "live" else {k: 100 - v for k, v in dmos.items()}
    noise = np.random.default_rng(0).permutation(len(right))
    epochs = [{k: float(noise[i]) for i, k in enumerate(right)}, right, {k: -v for k, v in right.items()}]
    best = {"score": float("-inf"), "epoch": None, "metrics": {}}
    per_dataset: dict[str, dict] = {}
    sets = twin_test_sets(root)
    for epoch, scores in enumerate(epochs):
        results = evaluate(LookupModel(scores), sets, cpu_run(), epoch, "hq",
                                  trained_higher_is_better=trained_on == "tid2013")
        engine.update_best(best, per_dataset, {n: {k: m[k] for k in ("srcc", "plcc", "krcc")}
                                               for n, m in results.items()}, epoch)
    assert best["epoch"] == 1
    assert {name: m["epoch"] for name, m in per_dataset.items()} == {"live": 1, "tid2013": 1}
    assert best["score"] > 2.9  # the mean of SRCC + PLCC + KRCC of the perfect epoch


def test_best_uses_srcc_plcc_krcc_and_a_nan_first_epoch_does_not_freeze_it():
    best = {"score": float("-inf"), "epoch": None, "metrics": {}}
    per_dataset: dict[str, dict] = {}
    nan = {"srcc": float("nan"), "plcc": float("nan"), "krcc": float("nan")}
    assert engine.update_best(best, per_dataset, {"a": nan, "b": nan}, 0)  # something to write best.pth from
    # epoch 1: the higher SRCC, but the lower sum; epoch 2: the higher sum
    assert engine.update_best(best, per_dataset, {"a": {"srcc": 0.8, "plcc": 0.1, "krcc": 0.6},
                                                  "b": {"srcc": 0.5, "plcc": 0.5, "krcc": 0.4}}, 1)
    assert per_dataset["a"]["epoch"] == 1 and per_dataset["b"]["epoch"] == 1
    assert engine.update_best(best, per_dataset, {"a": {"srcc": 0.7, "plcc": 0.7, "krcc": 0.5},
                                                  "b": {"srcc": 0.5, "plcc": 0.5, "krcc": 0.4}}, 2)
    assert per_dataset["a"]["epoch"] == 2 and per_dataset["b"]["epoch"] == 1 and best["epoch"] == 2
    assert not engine.update_best(best, per_dataset, {"a": nan, "b": {"srcc": 0.9, "plcc": 0.9, "krcc": 0.9}}, 3)
    assert per_dataset["a"]["epoch"] == 2 and per_dataset["b"]["epoch"] == 3  # NaN never replaces a number
    assert best["epoch"] == 2 and best["score"] == pytest.approx((1.9 + 1.4) / 2)  # a NaN set counts as -3


# ---- precision of evaluation --------------------------------------------------------------------------
def _autocast_seen(model: nn.Module, run: Run, loader) -> set:
    seen = set()

    def hook(module, inputs, output):
        # the score head always runs in fp32, so the autocast state says what the network ran in
        enabled = torch.is_autocast_enabled("cpu")
        seen.add((enabled, torch.get_autocast_dtype("cpu") if enabled else output[2].dtype))
    handle = model.register_forward_hook(hook)
    try:
        predict(model, loader, run, 0, "hq")
    finally:
        handle.remove()
    return seen


def test_evaluation_runs_in_fp32_under_training_amp(live_and_mos_twin):
    root, _ = live_and_mos_twin
    loader = twin_test_sets(root)[0].loader
    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=1, MLP_depth=1, distillation_layer=1, pretrained=False)
    run = setup_run(gpu_ids="cpu", seed=0, amp="bf16", eval_amp="off")
    assert run.precision.dtype == torch.bfloat16  # training in bf16 ...
    assert _autocast_seen(net, run, loader) == {(False, torch.float32)}  # ... evaluation in fp32
    assert _autocast_seen(net, setup_run(gpu_ids="cpu", seed=0, amp="bf16", eval_amp="bf16"), loader) == {
        (True, torch.bfloat16)}


# ---- the teacher's evaluation patches -----------------------------------------------------------------
def _orientations(dataset, epoch: int) -> list[tuple[int, int]]:
    """(dx, dy) of the R/G position gradients of each LQ patch: (1, 1) for a plain crop."""
    out = []
    for index in range(len(dataset)):
        patches = dataset[(index, epoch)]["lq"].int()  # uint8 pixel values
        for p in patches:
            out.append((int(p[0, 0, 1] - p[0, 0, 0]), int(p[1, 1, 0] - p[1, 0, 0])))
    return out


def test_teacher_evaluation_augments_as_the_original_unless_turned_off(tmp_path):
    make_kadid(tmp_path / "kadid10k", n_refs=2, n_types=1, n_levels=2)
    args = teacher_options.set_args(["--dataset_dir", str(tmp_path), "--patch_size", "8", "--self_patch_num", "6",
                                     "--num_workers", "0"])
    assert args.teacher_test_augment is True  # faithful default
    def test_set(mode: str, augment: bool):
        return build_test_sets(["kadid10k"], mode, **data_options(args), batch_size=4, augment_teacher=augment,
                               ref_folder=tmp_path / "refs")[0].loader.dataset

    augmented = test_set("lq_hq", args.teacher_test_augment)
    seen = _orientations(augmented, 0)
    assert {(1, 1), (-1, 1), (1, -1), (-1, -1)} <= set(seen)  # flips and 180-degree rotations at test time
    assert seen == _orientations(augmented, 0)  # seeded: the same patches again
    item = augmented[(0, 0)]
    np.testing.assert_array_equal(item["lq"][:, :2], item["hq"][:, :2])
    plain = test_set("lq_hq", False)
    assert set(_orientations(plain, 0)) == {(1, 1)}
    # the student is evaluated on plain crops whatever the option says
    make_ref_pool(tmp_path / "refs", n=2)
    assert set(_orientations(test_set("lq_hq_ref", True), 0)) == {(1, 1)}


# ---- KD features in the training loop -----------------------------------------------------------------
@pytest.mark.parametrize("all_diff", [False, True])
def test_the_student_loop_distils_the_zip_rules_features(tmp_path, all_diff):
    make_tid2013(tmp_path / "TID2013", n_refs=2)
    refs = make_ref_pool(tmp_path / "refs", n=2)
    dataset = build_dataset("tid2013", tmp_path / "TID2013", "lq_hq_ref", patch_size=32, patch_num=2,
                            ref_paths=refs, seed=3, train=True)
    loader = build_loader(dataset, len(dataset), shuffle=False, seed=3)  # one step
    torch.manual_seed(1)
    teacher = DistillationIQANet(self_patch_num=2, MLP_depth=1, distillation_layer=4, pretrained=False).eval()
    student = DistillationIQANet(self_patch_num=2, MLP_depth=1, distillation_layer=4, pretrained=False)
    # MLP depth 1, d = 4: the difference list holds 4 steps (rearrange, embedding, 2 blocks), the LQ list 3
    set_loader_epoch(loader, 0)
    batch = next(iter(loader))
    with torch.no_grad():
        lq, hq, ref = (to_model_input(batch[key], "cpu") for key in ("lq", "hq", "ref"))  # as the loop does
        t_diff, _, _ = teacher(lq, hq)
        s_diff, _, _ = student.train()(lq, ref)
    n = 4 if all_diff else 3
    assert len(t_diff) == 4
    expected = sum(torch.nn.functional.mse_loss(s, t).item() for s, t in zip(s_diff[:n], t_diff[:n]))
    optimizer = make_optimizer(student, 1e-4, 1, 0)
    stats = train_one_epoch(student, loader, optimizer, cpu_run().precision.scaler(), cpu_run(), 0,
                            kd=Distillation(teacher, all_diff=all_diff))
    assert stats["feature_loss"] == pytest.approx(expected, rel=1e-4)


# ---- options and the student's training set -----------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-3"])
def test_distillation_layer_must_leave_something_to_distil(value):
    with pytest.raises(UserError, match="--distillation_layer must be at least 1"):
        student_options.set_args(["--distillation_layer", value])


@pytest.mark.parametrize("dataset", ["koniq-10k", "livec", "bid"])
def test_student_refuses_an_authentic_training_set_at_start(tmp_path, dataset):
    import train_DistillationIQA

    args = student_options.set_args(["--train_dataset", dataset, "--checkpoint_dir", str(tmp_path / "run"),
                                     "--gpu_ids", "cpu", "--teacherNet_model_path", str(tmp_path / "none.pth")])
    with pytest.raises(UserError, match=f"--train_dataset {dataset}: .*pixel-aligned HQ references") as err:
        train_DistillationIQA.main(args)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything was set up


def test_training_set_of_a_checkpoint(tmp_path):
    torch.save({"model": {}, "args": {"train_dataset": "live"}}, tmp_path / "ours.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "released.pth")
    assert training_set_of(tmp_path / "ours.pth", "kadid10k")[0] == "live"
    assert training_set_of(tmp_path / "released.pth", "kadid10k")[0] == "kadid10k"
    assert training_set_of(tmp_path / "released.pth", "csiq")[0] == "csiq"


# ---- the test scripts on the original's command lines -------------------------------------------------
ORIGINAL_STYLE = ["--train_dataset", "kadid10k", "--test_dataset", "live", "--train_patch_num", "1",
                  "--test_patch_num", "1", "--lr", "2e-5", "--weight_decay", "5e-4", "--batch_size", "32",
                  "--epochs", "100", "--train_test_num", "1", "--update_opt_epoch", "30", "--use_refHQ", "true",
                  "--distillation_loss", "l1", "--net_print", "2000", "--use_fitting_prcc_srcc", "true",
                  "--print_netC", "false", "--distillation_layer", "18", "--gpu_ids", "cpu"]


@pytest.mark.parametrize("script", ["test", "single"])
def test_test_scripts_parse_every_original_option(script):
    extra = ["--lq", "x.png"] if script == "single" else []
    parse, parser = {"test": (student_options.set_test_args, student_options.get_test_args_parser),
                     "single": (student_options.set_single_args, student_options.get_single_args_parser)}[script]
    args = parse([*ORIGINAL_STYLE, *extra])
    assert args.batch_size == 32 and args.lr == 2e-5 and args.distillation_loss == "l1"
    defaults = parse(extra)
    train = student_options.set_args([])
    for option in ("train_dataset", "train_patch_num", "test_patch_num", "lr", "weight_decay", "batch_size",
                   "epochs", "train_test_num", "update_opt_epoch", "use_refHQ", "distillation_loss", "net_print",
                   "use_fitting_prcc_srcc", "print_netC", "distillation_layer", "self_patch_num", "patch_size",
                   "gpu_ids", "checkpoint_dir"):
        assert getattr(defaults, option) == getattr(train, option), option  # one parser's defaults, as the original
    assert "no effect in testing" in parser().format_help()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """A tiny student checkpoint (ours: it stores its options) and a LIVE-format test set."""
    root = tmp_path_factory.mktemp("scripted")
    make_live(root / "dataset" / "LIVE", n_refs=3)
    make_ref_pool(root / "dataset" / "DIV2K_ref" / "val_HR", n=2)
    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=2, distillation_layer=18, pretrained=False)
    torch.save({"model": net.state_dict(), "args": {"train_dataset": "kadid10k"}}, root / "student.pth")
    return root


def test_test_script_runs_an_original_command_line_in_fp32(scripted, monkeypatch):
    import test_DistillationIQA

    monkeypatch.chdir(scripted)
    common = [*ORIGINAL_STYLE, "--self_patch_num", "2", "--patch_size", "32", "--pretrained", "false",
              "--num_workers", "0", "--studentNet_model_path", "student.pth", "--test_rounds", "1"]
    plain = test_DistillationIQA.main(student_options.set_test_args([*common, "--checkpoint_dir", "a"]))
    assert list(plain["student"]) == ["live"]  # --test_dataset live: the original's option picks the test set
    amp = test_DistillationIQA.main(student_options.set_test_args([*common, "--checkpoint_dir", "b", "--amp", "bf16"]))
    assert amp == plain  # --amp is the precision of training: the evaluation stays in fp32
    mixed = test_DistillationIQA.main(student_options.set_test_args(
        [*common, "--checkpoint_dir", "c", "--eval_amp", "bf16"]))
    assert mixed != plain  # and mixed precision when asked


def test_single_script_runs_an_original_command_line_in_fp32(scripted, monkeypatch):
    import test_DistillationIQA_single

    monkeypatch.chdir(scripted)
    lq = [str(write_image(scripted / f"lq{i}.png", (48, 40), variant=7 + i)) for i in range(3)]
    common = [*ORIGINAL_STYLE, "--self_patch_num", "2", "--patch_size", "32", "--studentNet_model_path",
              "student.pth", "--repeats", "2", "--lq", *lq]

    def scores(*extra: str) -> list[float]:
        args = student_options.set_single_args([*common, *extra])
        return [row["score"] for row in test_DistillationIQA_single.main(args)]
    plain = scores()
    assert scores("--amp", "bf16") == plain  # fp32 unless --eval_amp asks
    assert scores("--test_batch_size", "1") == pytest.approx(plain, rel=1e-5)  # the batching of the scoring
    assert scores("--eval_amp", "bf16") != plain
