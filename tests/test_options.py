"""The option modules keep the original's names and defaults, and parsing has no side effects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import option_train_DistillationIQA as student_options
import option_train_DistillationIQA_FR as teacher_options
from common.errors import UserError
from tools.utils import select_device, wants_cpu

ROOT = Path(__file__).resolve().parents[1]

ORIGINAL_COMMON = {
    "gpu_ids": "0", "test_dataset": "live", "train_dataset": "kadid10k", "train_patch_num": 1,
    "test_patch_num": 1, "lr": 2e-5, "weight_decay": 5e-4, "batch_size": 32, "epochs": 100, "patch_size": 224,
    "self_patch_num": 10, "train_test_num": 1, "use_refHQ": True, "distillation_layer": 18, "net_print": 2000,
    "use_fitting_prcc_srcc": True, "print_netC": False,
}


def test_teacher_defaults_are_the_originals():
    args = teacher_options.set_args([])
    for key, value in ORIGINAL_COMMON.items():
        assert getattr(args, key) == value, key
    assert args.update_opt_epoch == 300 and args.lr_ratio == 10
    assert args.checkpoint_dir == "./checkpoint_FRIQA_teacher/"
    assert args.teacherNet_model_path is None
    assert args.ref_folder_paths == "./dataset/DIV2K_ref.tar.gz"
    assert args.test_datasets == ["live", "csiq", "tid2013"]
    assert Path(args.setting_file) == Path("./checkpoint_FRIQA_teacher/setting.txt")
    assert Path(args.model_checkpoint_dir) == Path("./checkpoint_FRIQA_teacher/models")
    assert Path(args.ref_train_dataset_path) == Path("dataset/DIV2K_ref/train_HR")
    assert Path(args.ref_test_dataset_path) == Path("dataset/DIV2K_ref/val_HR")
    assert Path(args.live_path) == Path("dataset/LIVE") and Path(args.koniq10k_path) == Path("dataset/koniq-10k")


def test_student_and_test_defaults_are_the_originals():
    args = student_options.set_args([])
    for key, value in ORIGINAL_COMMON.items():
        assert getattr(args, key) == value, key
    assert args.update_opt_epoch == 30 and args.lr_ratio == 1 and args.feature_loss_ratio == 1
    assert args.checkpoint_dir == "./checkpoint_DistillationIQA/"
    assert args.teacherNet_model_path == "./model_zoo/FR_teacher_cross_dataset.pth"
    assert args.studentNet_model_path is None
    assert args.distillation_loss == "mse"  # what the original computed (its option said l1)
    assert args.test_datasets == ["live", "csiq", "tid2013", "koniq-10k"]
    test = student_options.set_test_args([])
    assert test.studentNet_model_path == "./model_zoo/NAR_student_cross_dataset.pth"
    assert test.test_rounds == 10


def test_new_options():
    args = teacher_options.set_args(["--dataset_dir", "/data", "--test_datasets", "csiq,koniq-10k", "--pretrained",
                                     "false", "--seed", "7", "--num_workers", "0", "--resume", "--amp", "bf16",
                                     "--csiq_path", "/elsewhere/CSIQ"])
    assert args.pretrained is False and args.seed == 7 and args.num_workers == 0
    assert args.resume == "last" and args.amp == "bf16"
    assert args.test_datasets == ["csiq", "koniq-10k"]
    assert args.dataset_paths["csiq"] == "/elsewhere/CSIQ"
    assert Path(args.dataset_paths["tid2013"]) == Path("/data/TID2013")
    assert Path(args.ref_train_dataset_path) == Path("/data/DIV2K_ref/train_HR")
    assert teacher_options.set_args(["--pretrained", "weights/r50.pth"]).pretrained == "weights/r50.pth"
    assert teacher_options.set_args(["--pretrained", "true"]).pretrained is True


def test_bad_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        teacher_options.set_args(["--test_datasets", "live,imagenet"])
    assert "unknown dataset(s) imagenet" in capsys.readouterr().err
    with pytest.raises(UserError, match="--batch_size must be at least 1"):
        teacher_options.set_args(["--batch_size", "0"])
    with pytest.raises(SystemExit):
        student_options.set_args(["--distillation_loss", "cosine"])


@pytest.mark.parametrize("value", ["cpu", "-1", "", "CPU"])
def test_gpu_ids_cpu(value):
    assert wants_cpu(value)
    assert select_device(value).type == "cpu"


def test_help_creates_nothing(tmp_path):
    for script in ("train_DistillationIQA_FR.py", "train_DistillationIQA.py", "test_DistillationIQA.py",
                   "test_DistillationIQA_single.py"):
        result = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--self_patch_num" in result.stdout
    assert os.listdir(tmp_path) == []


def test_check_args_writes_the_options_file(tmp_path, capsys):
    args = teacher_options.set_args(["--checkpoint_dir", str(tmp_path / "run"), "--seed", "3"])
    teacher_options.check_args(args)
    text = (tmp_path / "run" / "setting.txt").read_text()
    assert text.startswith("------------ Options -------------\n") and "seed: 3\n" in text
    assert text.rstrip().endswith("-------------- End ----------------")
    for sub in ("models", "results", "log"):
        assert (tmp_path / "run" / sub).is_dir()
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        teacher_options.check_args(teacher_options.set_args(["--checkpoint_dir", str(blocked)]))
