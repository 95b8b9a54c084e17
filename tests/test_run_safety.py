"""Runs never silently lose, mix or mis-select results: run folders, resume, roles, pre-flight checks,
NaN, one-line errors, partial scoring (the training runs are in-process, tiny, on the CPU)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import option_train_DistillationIQA as student_options
import option_train_DistillationIQA_FR as teacher_options
import test_DistillationIQA
import test_DistillationIQA_single
import train_DistillationIQA
import train_DistillationIQA_FR
from common.errors import UserError
from dataloaders import build_dataset, build_loader
from dataloaders.__main__ import main as dataloaders_main
from dataloaders.check import check_dataset
from dataloaders.sampling import fit_patch_size
from models.DistillationIQA import DistillationIQANet, load_backbone_weights
from tools import engine, run_folder
from tools.checkpoint import ensure_writable_folder, load_model_checkpoint, serializable_options
from tools.dataset_fixtures import make_kadid, make_ref_pool, make_tid2013, write_image
from tools.networks import load_frozen_teacher
from tools.scorer import IQAScorer

NET = ["--patch_size", "32", "--self_patch_num", "2", "--distillation_layer", "4", "--pretrained", "false",
       "--gpu_ids", "cpu", "--num_workers", "0", "--seed", "1", "--test_datasets", "tid2013"]
SMALL = [*NET, "--batch_size", "4"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def train_teacher(data: Path, folder: Path, *extra: str) -> dict:
    args = teacher_options.set_args([*SMALL, "--dataset_dir", str(data), "--checkpoint_dir", str(folder), *extra])
    return train_DistillationIQA_FR.main(args)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety") / "dataset"
    make_kadid(root / "kadid10k", n_refs=2)  # 8 training images: 2 steps of 4
    make_tid2013(root / "TID2013", n_refs=2, n_levels=1)  # 6 test images
    make_ref_pool(root / "DIV2K_ref" / "val_HR", n=2)
    return root


@pytest.fixture(scope="module")
def trained(data) -> Path:
    """A finished 2-epoch teacher run (not to be changed: tests work on linked copies)."""
    folder = data.parent / "trained"
    train_teacher(data, folder, "--epochs", "2")
    return folder


def copy_run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the run whose files are hard links: the run's writes replace files, never change them."""
    folder = tmp_path / "run"
    shutil.copytree(trained, folder, copy_function=os.link)
    return folder


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ---- 1. a crash between the checkpoint writes; leftovers of interrupted writes ------------------------
def test_resume_restores_the_best_file_and_removes_leftovers(trained, data, tmp_path):
    folder = copy_run(trained, tmp_path)
    models = folder / "models"
    best_epoch = load(models / "last.pth")["best"]["epoch"]
    other = 1 - best_epoch
    # what a kill -9 in the middle of the writes leaves: an older best file, temporaries, a metrics.csv behind
    (models / "best.pth").unlink()
    shutil.copyfile(models / f"FRIQA_teacher_{other}.pth", models / "best.pth")
    (models / ".best.pth.k2j3h4_a.tmp").write_bytes(b"half a checkpoint")
    (folder / "results" / ".metrics.csv.x8Yz1q.tmp").write_text("round,epoch\n")
    metrics = folder / "results" / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))
    assert load(models / "best.pth")["epoch"] == other

    train_teacher(data, folder, "--epochs", "2", "--resume")
    assert load(models / "best.pth")["epoch"] == best_epoch
    assert sorted(p.name for p in models.iterdir()) == \
        ["FRIQA_teacher_0.pth", "FRIQA_teacher_1.pth", "best.pth", "last.pth"]
    assert not list((folder / "results").glob(".*.tmp"))
    assert [r["epoch"] for r in csv.DictReader(open(metrics))] == ["0", "1"]
    assert "best.pth was not the recorded best epoch" in (folder / "log" / "log.txt").read_text()


def _fake(path: Path, round_index: int, epoch: int, **extra) -> None:
    torch.save({"model": {}, "optimizer": {}, "epoch": epoch, "round": round_index, **extra}, path)


def test_repair_with_per_round_names(tmp_path):
    """Round 2 of a within-dataset run, crashed after last.pth: every best_r<k> is the recorded epoch."""
    models = tmp_path / "models"
    models.mkdir()
    args = argparse.Namespace(model_checkpoint_dir=str(models), result_checkpoint_dir=str(tmp_path / "results"),
                              resume="last")
    state = {"model": {}, "optimizer": {}, "epoch": 0, "round": 1, "best": {"epoch": 0},
             "rounds": [{"round": 1, "best_epoch": 1}], "history": [{"round": 1, "epoch": 0}]}
    torch.save(state, models / "last.pth")
    _fake(models / "NAR_student_r1_0.pth", 0, 0)
    _fake(models / "NAR_student_r1_1.pth", 0, 1)
    shutil.copyfile(models / "NAR_student_r1_0.pth", models / "best_r1.pth")  # stale: round 1's best is epoch 1
    _fake(models / "NAR_student_r2_1.pth", 1, 1)  # after the point resumed from
    _fake(models / "best_r3.pth", 2, 0)
    notes = run_folder.repair(args, state, "student", rounds=3)
    assert load(models / "best_r1.pth")["epoch"] == 1
    assert (load(models / "best_r2.pth")["round"], load(models / "best_r2.pth")["epoch"]) == (1, 0)
    assert load(models / "NAR_student_r2_0.pth")["epoch"] == 0  # restored from last.pth
    assert not (models / "NAR_student_r2_1.pth").exists() and not (models / "best_r3.pth").exists()
    assert any("NAR_student_r2_1.pth" in n for n in notes)
    # resuming from an earlier epoch file: last.pth and the later files follow
    args.resume = str(models / "NAR_student_r1_0.pth")
    earlier = {**state, "epoch": 0, "round": 0, "best": {"epoch": 0}, "rounds": []}
    run_folder.repair(args, earlier, "student", rounds=3)
    assert (load(models / "last.pth")["round"], load(models / "last.pth")["epoch"]) == (0, 0)
    assert not (models / "NAR_student_r1_1.pth").exists() and not (models / "best_r2.pth").exists()
    assert load(models / "best_r1.pth")["epoch"] == 0
    # a best file that cannot be made right (round 1's best epoch 1 is gone) is an error, not a silent mix
    args.resume = "last"
    torch.save(state, models / "last.pth")
    with pytest.raises(UserError, match=r"best_r1\.pth does not hold the recorded best epoch 1"):
        run_folder.repair(args, state, "student", rounds=3)


# ---- 2. one run per folder, a lock ---------------------------------------------------------------------
def test_second_run_is_refused_and_overwrite_starts_afresh(trained, data, tmp_path):
    folder = copy_run(trained, tmp_path)
    before = {p.name: p.stat().st_ino for p in (folder / "models").iterdir()}
    with pytest.raises(UserError) as err:
        train_teacher(data, folder, "--epochs", "1")
    assert "already holds a run" in one_line(err) and "--resume" in str(err.value) and "--overwrite" in str(err.value)
    assert {p.name: p.stat().st_ino for p in (folder / "models").iterdir()} == before
    with pytest.raises(UserError, match="lies in the run that --overwrite would delete"):
        train_teacher(data, folder, "--epochs", "1", "--overwrite", "--teacherNet_model_path",
                      str(folder / "models" / "best.pth"))

    (folder / "results" / "test_results.csv").write_text("model\n")  # the test script's, not the run's

    args = teacher_options.set_args([*SMALL, "--dataset_dir", str(data), "--checkpoint_dir", str(folder),
                                     "--overwrite"])
    run = engine.setup_training_run(args)  # what the training script does first
    try:
        assert (folder / run_folder.LOCK_NAME).exists()
        assert list((folder / "models").iterdir()) == []
        assert sorted(p.name for p in (folder / "results").iterdir()) == ["test_results.csv"]
        assert "round 1 epoch 1:" not in (folder / "log" / "log.txt").read_text()  # the old run's log is gone
    finally:
        run.close()
    assert not (folder / run_folder.LOCK_NAME).exists()


def test_lock_against_a_live_run_and_a_stale_lock(trained, data, tmp_path):
    folder = copy_run(trained, tmp_path)
    lock_path = folder / run_folder.LOCK_NAME
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = {**run_folder.RunLock(lock_path).record, "pid": sleeper.pid,
                "start": run_folder._process_start(sleeper.pid)}
        lock_path.write_text(json.dumps(live))
        with pytest.raises(UserError) as err:
            train_teacher(data, folder, "--epochs", "2", "--resume")
        assert f"in use by a live run (pid {sleeper.pid}" in one_line(err)
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same record, now of a dead process: taken over
    assert run_folder.RunLock(lock_path).acquire().held
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    # a lock held in this very process refuses a second one; release frees it
    mine = run_folder.RunLock(lock_path)
    lock_path.unlink()
    mine.acquire()
    with pytest.raises(UserError, match="in use by a live run"):
        run_folder.RunLock(lock_path).acquire()
    mine.release()
    assert not lock_path.exists()
    # another machine's lock cannot be checked: the message says which file to delete
    lock_path.write_text(json.dumps({**live, "host": "elsewhere"}))
    with pytest.raises(UserError, match=rf"on another machine .* delete {lock_path}"):
        run_folder.RunLock(lock_path).acquire()


# ---- 3. roles and experiment options -------------------------------------------------------------------
def test_checkpoints_record_their_role_and_the_wrong_role_is_refused(trained, data, tmp_path):
    assert load(trained / "models" / "last.pth")["role"] == "teacher"
    student = tmp_path / "student.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "role": "student"}, student)
    old_student = tmp_path / "old_student.pth"  # written before roles were recorded: its options tell
    torch.save({"model": {"w": torch.zeros(1)}, "args": {"distillation_loss": "mse"}}, old_student)
    for path in (student, old_student):
        args = student_options.set_args([*SMALL, "--teacherNet_model_path", str(path),
                                         "--checkpoint_dir", str(tmp_path / "s")])
        with pytest.raises(UserError) as err:
            load_frozen_teacher(args.teacherNet_model_path, torch.device("cpu"), self_patch_num=args.self_patch_num,
                                distillation_layer=args.distillation_layer)
        assert one_line(err) == (f"--teacherNet_model_path {path} is a NAR-student checkpoint; "
                                 "an FR-teacher checkpoint is needed here")
    authors = tmp_path / "authors.pth"  # a plain state dict carries no role: accepted
    torch.save({"w": torch.zeros(1)}, authors)
    assert set(load_model_checkpoint(authors, "--teacherNet_model_path", "teacher")) == {"w"}
    # a teacher given as the student to test
    args = student_options.set_test_args([*NET, "--studentNet_model_path", str(trained / "models" / "last.pth"),
                                          "--checkpoint_dir", str(tmp_path / "t"), "--test_rounds", "1",
                                          "--dataset_dir", str(data)])
    with pytest.raises(UserError, match=r"is an FR-teacher checkpoint; a NAR-student checkpoint is needed"):
        test_DistillationIQA.main(args)


def test_resume_refuses_changes_of_the_experiment(trained, data, tmp_path):
    folder = copy_run(trained, tmp_path)
    setting = (folder / "setting.txt").read_text()
    for extra, expected in ((["--lr", "1e-3"], "--lr 2e-05 -> 0.001"),
                            (["--patch_size", "48"], "--patch_size 32 -> 48"),
                            (["--seed", "2", "--batch_size", "2"], "--batch_size 4 -> 2; --seed 1 -> 2")):
        with pytest.raises(UserError) as err:
            train_teacher(data, folder, "--epochs", "2", "--resume", *extra)
        assert expected in one_line(err) and "would change the experiment" in str(err.value)
    assert (folder / "setting.txt").read_text() == setting  # refused before anything was written
    # a student run cannot continue a teacher's checkpoint
    args = student_options.set_args([*SMALL, "--dataset_dir", str(data), "--checkpoint_dir", str(folder), "--resume"])
    with pytest.raises(UserError, match="is an FR-teacher checkpoint; this script trains the NAR-student"):
        train_DistillationIQA.main(args)
    # options that may change are allowed and logged
    train_teacher(data, folder, "--epochs", "2", "--resume", "--num_workers", "1", "--net_print", "5")
    log = (folder / "log" / "log.txt").read_text()
    assert "resume: --num_workers 0 -> 1" in log and "resume: --net_print 2000 -> 5" in log


def test_every_training_option_is_classified_for_resume():
    names = set()
    for parser in (teacher_options.get_args_parser(), student_options.get_args_parser()):
        names |= {action.dest for action in parser._actions if action.dest != "help"}
    names |= {"dataset_paths", "model_checkpoint_dir", "result_checkpoint_dir", "log_checkpoint_dir"}
    experiment, may_change = set(run_folder.EXPERIMENT_OPTIONS), set(run_folder.MAY_CHANGE_OPTIONS)
    assert not experiment & may_change
    assert names - experiment - may_change == set()


def test_resume_checks_the_teacher_weights(tmp_path):
    args = student_options.set_args(["--checkpoint_dir", str(tmp_path), "--resume", *SMALL])
    teacher, other = (DistillationIQANet(self_patch_num=2, MLP_depth=1, distillation_layer=2, pretrained=False)
                      for _ in range(2))
    state = {"role": "student", "args": serializable_options(vars(args)), "teacher": run_folder.fingerprint(teacher)}
    assert run_folder.check_resume(args, state, "student", teacher) == []  # the same teacher, the same options
    with pytest.raises(UserError, match="holds other weights than the teacher this run was distilled from"):
        run_folder.check_resume(args, state, "student", other)


# ---- 4. checked before training; a late failure keeps the trained epoch -------------------------------
def test_unreadable_test_image_and_unwritable_folder_are_found_before_training(data, tmp_path):
    tid = tmp_path / "TID2013"
    shutil.copytree(data / "TID2013", tid)
    broken = sorted((tid / "distorted_images").iterdir())[0]
    broken.write_bytes(b"BM not an image")
    folder = tmp_path / "run"
    with pytest.raises(UserError, match=rf"problem\(s\) with the images, found before training:\n  unreadable: "
                                        rf"cannot read image {broken}"):
        train_teacher(data, folder, "--epochs", "1", "--tid2013_path", str(tid))
    assert list((folder / "models").iterdir()) == []
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError) as err:
        train_teacher(data, blocker / "run", "--epochs", "1")
    assert f"--checkpoint_dir {blocker / 'run'} is not writable" in one_line(err)


def test_late_failures_keep_the_trained_epoch(trained, data, tmp_path):
    """An evaluation failure, then a write failure, after the same trained epoch: neither loses it."""
    folder = copy_run(trained, tmp_path)
    models = folder / "models"
    tid = tmp_path / "TID2013"
    shutil.copytree(data / "TID2013", tid)
    image = sorted((tid / "distorted_images").iterdir())[0]
    good = image.read_bytes()
    image.write_bytes(good[:200])  # the header reads, the pixels do not: found only when evaluating
    options = ["--epochs", "3", "--resume", "--tid2013_path", str(tid)]
    with pytest.raises(UserError) as err:
        train_teacher(data, folder, *options)
    assert str(err.value).startswith("evaluation after epoch 2 failed: cannot read image")
    assert "the trained epoch 2 is saved in" in str(err.value) and "--resume" in str(err.value)
    last = load(models / "last.pth")
    assert last["pending"] is not None and last["epoch"] == 1
    assert not (models / "FRIQA_teacher_2.pth").exists()

    image.write_bytes(good)
    blocked = models / "FRIQA_teacher_2.pth"
    blocked.mkdir()  # now the epoch file cannot be written
    with pytest.raises(UserError) as err:
        train_teacher(data, folder, *options)  # evaluates the saved epoch 2, then fails to write
    assert one_line(err).startswith(f"cannot write {blocked}:")
    assert "training stopped after epoch 2" in str(err.value) and "--resume" in str(err.value)
    assert "epoch 2 trained, its evaluation left" in (folder / "log" / "log.txt").read_text()
    last = load(models / "last.pth")  # written first
    assert last["epoch"] == 2 and last.get("pending") is None and "tid2013" in last["metrics"]

    blocked.rmdir()
    train_teacher(data, folder, *options)  # nothing left to train: the epoch file is restored from last.pth
    assert load(blocked)["epoch"] == 2
    assert [r["epoch"] for r in csv.DictReader(open(folder / "results" / "metrics.csv"))] == ["0", "1", "2"]


# ---- 5. nonsense options, NaN ------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--lr", "-1e-4", "--lr must be a finite number above 0, got -0.0001"), ("--lr", "nan", "--lr must be a finite"),
    ("--lr", "0", "--lr must be a finite number above 0"), ("--lr_ratio", "-10", "--lr_ratio must be a finite"),
    ("--weight_decay", "-1", "--weight_decay must be a finite number 0 or more"),
    ("--weight_decay", "inf", "--weight_decay must be a finite"), ("--seed", "-1", "--seed must be 0 or more"),
])
def test_bad_numbers_are_refused(option, value, message):
    with pytest.raises(UserError, match=message):
        teacher_options.set_args([f"{option}={value}"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(trained, data, tmp_path, monkeypatch):
    folder = copy_run(trained, tmp_path)
    original = engine.train_one_epoch

    def diverging(model, *args, **kwargs):
        with torch.no_grad():
            model.regressor.l2.weight.fill_(float("nan"))  # where a too large --lr ends within a few steps
        return original(model, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", diverging)
    with pytest.raises(UserError) as err:
        train_teacher(data, folder, "--epochs", "3", "--resume")
    assert one_line(err).startswith("training stopped: the loss is nan at epoch 2, iteration 1")
    assert "lower --lr" in str(err.value)
    assert sorted(p.name for p in (folder / "models").iterdir()) == \
        ["FRIQA_teacher_0.pth", "FRIQA_teacher_1.pth", "best.pth", "last.pth"]
    for name in ("last.pth", "best.pth"):
        assert all(bool(torch.isfinite(t).all()) for t in load(folder / "models" / name)["model"].values()
                   if t.is_floating_point())


def test_nan_checkpoint_is_refused_by_scoring(tmp_path):
    net = DistillationIQANet(self_patch_num=2, pretrained=False)
    state = net.state_dict()
    state["regressor.l2.weight"] = torch.full_like(state["regressor.l2.weight"], float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    refs = make_ref_pool(tmp_path / "refs", n=1)
    with pytest.raises(UserError, match=r"nan\.pth holds NaN or infinite weights .*regressor\.l2\.weight"):
        IQAScorer(path, refs, self_patch_num=2, patch_size=32)


# ---- 6. one line, not a traceback ---------------------------------------------------------------------
def test_error_in_a_dataloader_worker_keeps_its_message(data, tmp_path):
    tid = tmp_path / "TID2013"
    shutil.copytree(data / "TID2013", tid)
    image = sorted((tid / "distorted_images").iterdir())[0]
    image.write_bytes(image.read_bytes()[:200])
    dataset = build_dataset("tid2013", tid, "lq_hq", patch_size=32, patch_num=2)
    with pytest.raises(UserError) as err:
        list(build_loader(dataset, 4, shuffle=False, num_workers=1))
    assert str(err.value).startswith(f"cannot read image {image}") and "Traceback" not in str(err.value)
    assert "DataLoader worker" not in str(err.value)


def test_half_precision_loads_and_integer_weights_are_refused(small_net):
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in small_net.state_dict().items()}
    net = DistillationIQANet.from_checkpoint(state, self_patch_num=2, MLP_depth=2, distillation_layer=4)
    assert net.regressor.l1.weight.dtype == torch.float32
    assert torch.equal(net.regressor.l1.weight, state["regressor.l1.weight"].float())
    state = {k: (v.long() if v.is_floating_point() else v) for k, v in small_net.state_dict().items()}
    with pytest.raises(UserError, match=r"weights.pth holds non-floating-point weights .*\(int64\)"):
        DistillationIQANet.from_checkpoint(state, name="weights.pth", self_patch_num=2, MLP_depth=2,
                                           distillation_layer=4)


def test_pretrained_pointing_to_a_wrong_file(tmp_path, small_net):
    import torchvision

    cases = {"list.pth": [1, 2], "student.pth": small_net.state_dict(),
             "resnet18.pth": torchvision.models.resnet18().state_dict()}
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(UserError, match=rf"--pretrained {tmp_path / name} (is not a ResNet-50|does not fit)"):
            load_backbone_weights(small_net.feature_extractor.__class__(), str(tmp_path / name))
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    backbone = small_net.feature_extractor.__class__()
    load_backbone_weights(backbone, str(tmp_path / "r50.pth"))  # the right file loads


def test_label_row_with_extra_fields(tmp_path):
    make_kadid(tmp_path / "kadid10k", n_refs=1, n_types=1, n_levels=2)
    with open(tmp_path / "kadid10k" / "dmos.csv", "a") as handle:
        handle.write(",,,,extra\n")
    with pytest.raises(UserError, match=r"bad row in .*dmos\.csv, line 4: expected dist_img,ref_img,dmos,var, "
                                        r"got ',,,,extra'"):
        build_dataset("kadid10k", tmp_path / "kadid10k", "lq_hq", patch_size=32)


def _png_header_claiming(path: Path, width: int, height: int) -> None:
    """Rewrite a PNG's size in its header (the pixels stay small): what a decompression bomb looks like."""
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_decompression_bomb_under_check_quick(tmp_path, capsys):
    make_kadid(tmp_path / "kadid10k", n_refs=1, n_types=1, n_levels=2)
    bomb = tmp_path / "kadid10k" / "images" / "I01_01_02.png"
    _png_header_claiming(bomb, 30000, 30000)
    for quick in (["--quick"], []):
        status = dataloaders_main(["check", "--dataset", "kadid10k", "--root", str(tmp_path / "kadid10k"),
                                   "--patch_size", "32", "--json", *quick])
        report = json.loads(capsys.readouterr().out)
        assert status == 1 and [u["path"] for u in report["unreadable"]] == [str(bomb)]
        assert "decompression bomb" in report["unreadable"][0]["error"]


def test_script_option_errors_come_before_any_work(tmp_path, trained):
    with pytest.raises(UserError, match="--seed must be 0 or more, got -1"):
        student_options.set_single_args(["--lq", "a.png", "--seed", "-1"])
    with pytest.raises(UserError, match="--test_rounds must be at least 1, got 0"):
        student_options.set_test_args(["--test_rounds", "0"])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    missing_checkpoint = ["--studentNet_model_path", str(a_file), "--lq", "a.png"]  # not a checkpoint either
    for output, message in (("scores.txt", "scores.txt: expected a file name ending in .csv or .json"),
                            (str(a_file / "scores.csv"), f"{a_file / 'scores.csv'}: the folder {a_file} is a file")):
        args = student_options.set_single_args([*missing_checkpoint, "--output", output])
        with pytest.raises(UserError) as err:  # not about the checkpoint: checked before it is read
            test_DistillationIQA_single.main(args)
        assert one_line(err).startswith(f"--output {message}")
    args = student_options.set_test_args([*NET, "--studentNet_model_path", str(a_file), "--plot", str(a_file),
                                          "--checkpoint_dir", str(tmp_path / "t")])
    with pytest.raises(UserError, match=rf"--plot {a_file} is a file, expected a folder"):
        test_DistillationIQA.main(args)
    with pytest.raises(UserError, match="is not writable"):
        ensure_writable_folder(a_file / "plots", "--plot")


# ---- 7. partial scoring; a bounded upscale ------------------------------------------------------------
def test_single_script_scores_the_readable_images_and_lists_the_others(tmp_path, capsys):
    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=2, distillation_layer=4, pretrained=False)
    checkpoint = tmp_path / "student.pth"
    torch.save(net.state_dict(), checkpoint)
    folder = tmp_path / "photos"
    write_image(folder / "a.png", (40, 36), variant=1)
    write_image(folder / "c.png", (48, 40), variant=2)
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    refs = make_ref_pool(tmp_path / "refs", n=1)
    out = tmp_path / "scores.csv"
    args = student_options.set_single_args(["--patch_size", "32", "--self_patch_num", "2", "--distillation_layer", "4",
                                            "--gpu_ids", "cpu", "--repeats", "1", "--studentNet_model_path",
                                            str(checkpoint), "--lq", str(folder), "--ref", str(refs[0]), "--output",
                                            str(out)])
    with pytest.raises(UserError, match=r"^1 of 3 image\(s\) could not be scored \(listed above\)$"):
        test_DistillationIQA_single.main(args)
    printed = capsys.readouterr()
    assert "a.png" in printed.out and "c.png" in printed.out and "b.png" not in printed.out
    assert f"cannot read image {folder / 'b.png'}" in printed.err
    rows = list(csv.DictReader(open(out)))
    assert [Path(r["image"]).name for r in rows] == ["a.png", "c.png"]
    assert all(np.isfinite(float(r["score"])) for r in rows)


def test_upscaling_is_bounded():
    with pytest.raises(UserError, match=r"image strip\.png is 1x20000, .* too elongated to upscale"):
        fit_patch_size(Image.new("RGB", (1, 20000)), 224, True, "strip.png")
    assert min(fit_patch_size(Image.new("RGB", (100, 150)), 224, True, "small.png").size) >= 224


# ---- 8. the hint names the option; duplicate names --------------------------------------------------
def test_small_image_hint_names_the_scripts_option():
    with pytest.raises(UserError, match="--upscale_small_images"):
        fit_patch_size(Image.new("RGB", (100, 150)), 224, False, "small.png")


def test_check_reports_duplicate_names_with_conflicting_labels(tmp_path):
    entries = make_kadid(tmp_path / "kadid10k", n_refs=1, n_types=1, n_levels=2)
    label_file = tmp_path / "kadid10k" / "dmos.csv"
    first = entries[0]
    name, ref = Path(first.lq).name, Path(first.hq).name
    with open(label_file, "a") as handle:
        handle.write(f"{name}, {ref}, {first.label}, 0.5\n")  # the same label twice: reported, still usable
    report = check_dataset("kadid10k", tmp_path / "kadid10k", patch_size=32)
    assert report["usable"] and report["duplicates"][0]["conflicting"] is False
    with open(label_file, "a") as handle:
        handle.write(f"{name}, {ref}, 1.25, 0.5\n")
    report = check_dataset("kadid10k", tmp_path / "kadid10k", patch_size=32)
    assert not report["usable"]
    assert report["duplicates"] == [{"path": str(tmp_path / "kadid10k" / first.lq),
                                     "labels": [first.label, first.label, 1.25], "conflicting": True}]
