"""Outputs and inputs are checked before the work, finished work is never lost to a late error, and every
mistake ends in one line: the test scripts' outputs, the export, unreadable folders, options, labels the
checker refuses, strict JSON, deterministic metrics, file modes, a full disk."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import option_train_DistillationIQA as student_options
import option_train_DistillationIQA_FR as teacher_options
import test_DistillationIQA
import test_DistillationIQA_single
import train_DistillationIQA_FR
from common import files
from common.errors import UserError
from dataloaders import build_dataset
from dataloaders.__main__ import main as dataloaders_main
from dataloaders.check import check_dataset, format_report
from dataloaders.ref_cache import ReferenceCache
from models.DistillationIQA import DistillationIQANet
from tools import engine, run_folder
from tools.dataset_fixtures import make_kadid, make_ref_pool, make_tid2013, write_image
from tools.export_checkpoint import main as export_main
from tools.metrics import compute_metrics

NET = ["--patch_size", "32", "--self_patch_num", "2", "--distillation_layer", "4", "--pretrained", "false",
       "--gpu_ids", "cpu", "--num_workers", "0", "--seed", "1", "--ref_cache_gb", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust") / "dataset"
    make_tid2013(root / "TID2013", n_refs=2, n_levels=1)  # 6 test images
    make_ref_pool(root / "DIV2K_ref" / "val_HR", n=2)
    return root


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "student.pth"
    torch.save(DistillationIQANet(self_patch_num=2, distillation_layer=4, pretrained=False).state_dict(), path)
    return path


def script_args(data: Path, student: Path, folder: Path, *extra: str) -> argparse.Namespace:
    return student_options.set_test_args([*NET, "--dataset_dir", str(data), "--test_datasets", "tid2013",
                                          "--studentNet_model_path", str(student), "--checkpoint_dir", str(folder),
                                          *extra])


# ---- 1. the test script: every output and input before the first round; rows as each round ends --------
def test_test_script_checks_its_outputs_and_inputs_before_any_round(data, student, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("evaluated before the outputs were checked")

    monkeypatch.setattr(test_DistillationIQA, "evaluate", never)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(("--tsne", str(a_file)), f"--tsne {a_file} is a file, expected a folder"),
             (("--tsne_compare", str(tmp_path / "typo.pth")), f"--tsne_compare: checkpoint not found: "
                                                                f"{tmp_path / 'typo.pth'}")]
    for extra, message in cases:
        with pytest.raises(UserError) as err:
            test_DistillationIQA.main(script_args(data, student, tmp_path / "t", *extra))
        assert one_line(err) == message
    results = tmp_path / "r" / "results"
    (results / "test_results.csv").mkdir(parents=True)
    with pytest.raises(UserError, match="test_results.csv is a folder"):
        test_DistillationIQA.main(script_args(data, student, tmp_path / "r"))
    args = script_args(tmp_path / "nowhere", student, tmp_path / "n", "--test_datasets", "live,csiq")
    with pytest.raises(UserError) as err:
        test_DistillationIQA.main(args)
    assert one_line(err).startswith(f"no test dataset found (looked for live at {tmp_path / 'nowhere' / 'LIVE'}"
                                    f", csiq at {tmp_path / 'nowhere' / 'CSIQ'})")


def test_test_script_writes_each_round_and_its_own_log(data, student, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    (folder / "log").mkdir(parents=True)
    (folder / "log" / "log.txt").write_text("the training run's log\n")
    evaluate = test_DistillationIQA.evaluate

    def fails_in_round_2(model, test_sets, run, epoch, *args, **kwargs):
        if epoch == 1:
            raise UserError("the disk went away")
        return evaluate(model, test_sets, run, epoch, *args, **kwargs)

    monkeypatch.setattr(test_DistillationIQA, "evaluate", fails_in_round_2)
    with pytest.raises(UserError, match="the disk went away"):
        test_DistillationIQA.main(script_args(data, student, folder, "--test_rounds", "3"))
    rows = list(csv.DictReader(open(folder / "results" / "test_results.csv")))
    assert [(r["model"], r["dataset"], r["round"]) for r in rows] == [("student", "tid2013", "0")]
    assert math.isfinite(float(rows[0]["srcc"]))
    assert (folder / "log" / "log.txt").read_text() == "the training run's log\n"
    assert "round 0: tid2013 SRCC" in (folder / "log" / "test_log.txt").read_text()


# ---- the single script's --figure; the export onto its input -------------------------------------------
def test_single_script_checks_the_figure_before_scoring(tmp_path):
    photos = tmp_path / "photos"
    photo = write_image(photos / "photo.png", (40, 36))
    before = photo.read_bytes()
    refs = make_ref_pool(tmp_path / "refs", n=1)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    not_a_checkpoint = tmp_path / "student.pth"
    not_a_checkpoint.write_text("x")  # read only after the outputs were checked
    base = ["--studentNet_model_path", str(not_a_checkpoint), "--lq", str(photos), "--ref", str(refs[0])]
    for figure, message in ((photos, f"--figure {photos} is a folder, expected a file name"),
                            (a_file / "fig.png", f"--figure {a_file / 'fig.png'}: the folder {a_file} is a file"),
                            (photo, f"--figure {photo} is the input {photo}: writing it would replace that input")):
        args = student_options.set_single_args([*base, "--figure", str(figure)])
        with pytest.raises(UserError) as err:  # not about the checkpoint: checked before it is read
            test_DistillationIQA_single.main(args)
        assert one_line(err).startswith(message)
    link = tmp_path / "link.png"
    link.symlink_to(photo)
    with pytest.raises(UserError, match="is the input"):
        test_DistillationIQA_single.main(student_options.set_single_args([*base, "--figure", str(link)]))
    assert photo.read_bytes() == before
    assert sorted(p.name for p in photos.iterdir()) == ["photo.png"]  # no temporary file left


def test_a_failed_figure_write_leaves_nothing_behind(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from tools.visuals import save_figure

    fig = plt.figure(figsize=(1, 1))

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    fig.savefig = broken
    with pytest.raises(UserError, match="cannot write .*fig.png: No space left on device"):
        save_figure(fig, tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_write_onto_its_input(student, tmp_path):
    source = tmp_path / "last.pth"
    shutil.copy(student, source)
    before = source.read_bytes()
    link = tmp_path / "link.pth"
    link.symlink_to(source)
    for output in (source, link):
        with pytest.raises(UserError) as err:
            export_main([str(source), str(output)])
        assert one_line(err).startswith(f"output {output} is the input {source}")
    assert source.read_bytes() == before


# ---- the within-dataset split, before training -----------------------------------------------------------
def test_a_split_without_test_contents_is_refused_before_training(tmp_path, monkeypatch):
    make_kadid(tmp_path / "dataset" / "kadid10k", n_refs=2, n_types=1, n_levels=2)

    def never(*args, **kwargs):
        raise AssertionError("trained before the split was checked")

    monkeypatch.setattr(engine, "_train_round", never)
    args = teacher_options.set_args([*NET, "--dataset_dir", str(tmp_path / "dataset"), "--train_dataset", "kadid10k",
                                     "--test_dataset", "kadid10k", "--checkpoint_dir", str(tmp_path / "run")])
    with pytest.raises(UserError) as err:
        train_DistillationIQA_FR.main(args)
    assert "kadid10k (within-dataset protocol): its 2 content(s) split 80%/20% into 2 for training and 0 for " \
           "testing" in one_line(err)


# ---- 2. options, one line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--train_dataset", ",", "--train_dataset: expected a dataset name"),
    ("--train_dataset", "", "--train_dataset: expected a dataset name"),
    ("--ref_cache_gb", "nan", "--ref_cache_gb must be a finite number, 0 (off) or more, got nan"),
    ("--ref_cache_gb", "inf", "--ref_cache_gb must be a finite number, 0 (off) or more, got inf"),
])
def test_bad_options_are_one_line(option, value, message):
    with pytest.raises(UserError, match=re.escape(message)):
        student_options.set_args([option, value])


# ---- unreadable folders: one line (file modes need a process without the root's capabilities) -----------
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_file_permission_bypass() -> None:
    """Drop the capabilities by which root ignores file modes (this process only: a forked child)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    caps = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words
    if libc.capget(header, caps) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    mask = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    caps[0], caps[1] = caps[0] & mask, caps[1] & mask
    if libc.capset(header, caps) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def run_as_a_user(work):
    """`work()` in a forked child to which file modes apply (root drops its capabilities there): its return
    value, or the name of the exception that escaped it; None where no such child can be made."""
    import pickle

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            if os.geteuid() == 0:
                _drop_file_permission_bypass()
            result = ("ok", work())
        except UserError as err:
            result = ("UserError", str(err))
        except BaseException as err:  # noqa: BLE001 (reported to the parent)
            result = ("traceback", f"{type(err).__name__}: {err}")
        os.write(write, pickle.dumps(result))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data) if data else None


def printed_by(work):
    """`work`'s return value and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        value = work()
    return value, out.getvalue()


def test_unreadable_folders_are_one_line(tmp_path):
    kadid = tmp_path / "kadid10k"
    make_kadid(kadid, n_refs=1, n_types=1, n_levels=1)
    photo = write_image(tmp_path / "photo.png")
    locked = tmp_path / "locked"
    write_image(locked / "a.png")
    images = kadid / "images"

    checkpoint = tmp_path / "student.pth"
    checkpoint.write_text("x")  # read after the images were listed

    def single(*argv: str):
        return test_DistillationIQA_single.main(student_options.set_single_args(
            [*argv, "--gpu_ids", "cpu", "--studentNet_model_path", str(checkpoint)]))

    cases = {
        "probe": lambda: os.listdir(locked),
        "check": lambda: printed_by(lambda: dataloaders_main(["check", "--dataset", "kadid10k", "--root",
                                                              str(kadid), "--patch_size", "32"])),
        "check_ref": lambda: printed_by(lambda: dataloaders_main(["check", "--dataset", "kadid10k", "--root",
                                                                  str(kadid), "--ref_root", str(locked),
                                                                  "--patch_size", "32", "--quick"])),
        "training": lambda: build_dataset("kadid10k", kadid, "lq", patch_size=32),
        "lq": lambda: single("--lq", str(locked), "--ref", str(photo)),
        "ref": lambda: single("--lq", str(photo), "--ref", str(locked)),
    }
    images.chmod(0)
    locked.chmod(0)
    try:
        results = {name: run_as_a_user(case) for name, case in cases.items()}
    finally:
        images.chmod(0o755)
        locked.chmod(0o755)
    if results["probe"] is None or results["probe"][0] == "ok":
        pytest.skip("no process to which file modes apply (root that cannot drop its capabilities)")
    for name in ("check", "check_ref"):
        assert results[name][0] == "ok" and results[name][1][0] == 1, results  # rc 1: NOT usable
        assert "result       NOT usable" in results[name][1][1]
    assert f"cannot read {images}/" in results["check"][1][1]
    assert f"ref pool     error: reference image folder: cannot read {locked}: Permission denied" in \
        results["check_ref"][1][1]
    assert results["training"][0] == "UserError" and \
        results["training"][1].startswith(f"kadid10k: cannot read {images}/"), results
    assert results["lq"] == ("UserError", f"--lq: cannot read {locked}: Permission denied"), results
    assert results["ref"] == ("UserError", f"--ref: cannot read {locked}: Permission denied"), results


# ---- 3. what the checker calls unusable is refused; every unreadable reference listed -------------------
def test_conflicting_labels_are_refused_with_the_checkers_words(tmp_path):
    root = tmp_path / "kadid10k"
    entries = make_kadid(root, n_refs=1, n_types=1, n_levels=2)
    first = entries[0]
    with open(root / "dmos.csv", "a") as handle:
        handle.write(f"{Path(first.lq).name}, {Path(first.hq).name}, 1.25, 0.5\n")
    line = f"  conflicting labels: {root / first.lq} ({first.label:g}, 1.25)"
    assert line in format_report(check_dataset("kadid10k", root, patch_size=32)).splitlines()
    for train in (True, False):
        with pytest.raises(UserError) as err:
            build_dataset("kadid10k", root, "lq", patch_size=32, train=train)
        assert line in str(err.value).splitlines()


def test_every_unreadable_reference_is_listed_with_the_cache_on(tmp_path):
    root = tmp_path / "kadid10k"
    make_kadid(root, n_refs=1, n_types=1, n_levels=1)
    refs = make_ref_pool(tmp_path / "refs", n=3)
    for ref in refs[:2]:
        ref.write_bytes(b"\x89PNG not an image")
    dataset = build_dataset("kadid10k", root, "lq_hq_ref", patch_size=32, ref_paths=refs,
                            ref_cache=ReferenceCache(0.01))
    with pytest.raises(UserError) as err:
        run_folder.check_images([dataset])
    listed = [line for line in str(err.value).splitlines() if line.startswith("  unreadable:")]
    assert [str(ref) in line for line, ref in zip(listed, refs[:2])] == [True, True]


def test_json_has_no_bare_nan(tmp_path):
    path = tmp_path / "summary.json"
    files.write_json(path, {"srcc": float("nan"), "rounds": [{"plcc": float("inf")}, (np.float64("-inf"), 0.5)]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}")) == \
        {"srcc": None, "rounds": [{"plcc": None}, [None, 0.5]]}


# ---- 4. the same inputs give the same numbers ---------------------------------------------------------
@pytest.mark.parametrize("example, repeats", [("narrow band", 512), ("logistic", 128)])
def test_fitted_plcc_is_bit_identical_on_repeat(example, repeats):
    rng = np.random.default_rng(37)
    labels = rng.uniform(1, 5, 60)
    pred = 0.02 + rng.normal(0, 0.0017, 60)  # the example: the fit runs toward a step
    if example == "logistic":  # a well-posed fit
        pred = rng.normal(size=60)
        labels = 3 / (1 + np.exp(-2 * pred)) + rng.normal(scale=0.2, size=60)
    raw = bytearray(60 * 8 + 16)
    results = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the degenerate fit's note (see the next test)
        for i in range(repeats):  # the same values at other memory offsets (aligned or not)
            view = np.ndarray((60,), np.float64, buffer=raw, offset=i % 16)
            view[:] = pred
            m = compute_metrics(view, labels.copy())
            results.add((m["plcc"], m["rmse"], m["fit_note"]))
    assert len(results) == 1
    assert next(iter(results))[2] == ("" if example == "logistic" else next(iter(results))[2])


def test_a_fit_that_degenerates_into_a_step_falls_back_to_the_linear_plcc():
    rng = np.random.default_rng(37)
    labels = rng.uniform(1, 5, 60)
    pred = 0.02 + rng.normal(0, 0.0017, 60)  # the fit runs toward a step
    with pytest.warns(RuntimeWarning, match="degenerate"):
        m = compute_metrics(pred, labels)
    assert not m["fitted"] and m["fit_note"].startswith("logistic fit degenerate (a step")
    assert m["plcc"] == pytest.approx(compute_metrics(pred, labels, fit=False)["plcc"], abs=1e-12)


def test_the_fit_does_not_depend_on_the_scale_of_the_predictions():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=100)
    labels = 3 / (1 + np.exp(-2 * pred)) + rng.normal(scale=0.2, size=100)
    plcc = compute_metrics(pred, labels)["plcc"]
    assert compute_metrics(pred * 1e-4 + 7, labels)["plcc"] == pytest.approx(plcc, abs=1e-9)


# ---- 5. files as a user expects them ------------------------------------------------------------------
def test_atomic_writes_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_json(tmp_path / "a.json", {})
        files.atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "last.pth")
        os.umask(0o077)
        files.write_csv(tmp_path / "b.csv", [{"a": 1}])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o644, "last.pth": 0o644, "b.csv": 0o600}


def test_a_full_disk_before_the_first_checkpoint_says_what_is_true(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise UserError(f"cannot write {tmp_path}/models/last.pth: No space left on device")

    monkeypatch.setattr(files, "atomic_torch_save", full)
    args = SimpleNamespace(model_checkpoint_dir=str(tmp_path / "models"), result_checkpoint_dir=str(tmp_path))
    state = SimpleNamespace(epoch=0, checkpoint=lambda record: {})
    role = engine.Role("FRIQA_teacher", "lq_hq")
    with pytest.raises(UserError) as err:
        engine._save_epoch(args, role, state, None, True, "")
    message = one_line(err)
    assert "holds no last.pth: make room and run the same command again" in message and "--resume" not in message
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "last.pth").write_bytes(b"an earlier epoch")
    with pytest.raises(UserError, match="last.pth holds the last epoch that could be saved: make room and "
                                        "continue with --resume"):
        engine._save_epoch(args, role, state, None, True, "")


def test_a_permission_error_anywhere_ends_in_one_line(capsys):
    """The last safety net of every script: a PermissionError met anywhere is one line naming the file, status 2."""
    from common.errors import run_cli

    def main():
        raise PermissionError(13, "Permission denied", "/data/locked/img.png")

    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: permission denied: /data/locked/img.png (Permission denied)\n"


def test_test_script_reads_every_image_header_before_the_first_round(data, tmp_path, student, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("evaluated before the images were checked")

    root = tmp_path / "dataset"
    shutil.copytree(data, root)
    broken = sorted((root / "TID2013" / "distorted_images").iterdir())[0]
    broken.write_bytes(b"not an image")
    monkeypatch.setattr(test_DistillationIQA, "evaluate", never)
    with pytest.raises(UserError, match="problem\\(s\\) with the images, found before testing") as err:
        test_DistillationIQA.main(script_args(root, student, tmp_path / "t"))
    assert str(broken) in str(err.value)
    assert not (tmp_path / "t" / "results" / "test_results.csv").exists()
