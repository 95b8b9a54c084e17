"""`make demo`: the whole method on real photographs, on a 2-core CPU, offline if need be, in fp32 in ~10 minutes.

1. builds the demo data (tools/demo_data.py): KADID-format training set, TID2013-format held-out content,
   DIV2K-style reference pools of many views of the other photos — all from the photos scikit-image ships;
2. chooses the training precision: bf16 autocast only where the CPU has bf16 units (AVX512-BF16/AMX flags) *and*
   a measured training step of the real network is at least BF16_MIN_SPEEDUP times faster; fp32 otherwise;
3. trains the FR-teacher, then two NAR-students that start from the teacher's weights and differ only in the KD
   feature loss (DEMO_STUDENT vs DEMO_STUDENT_NO_KD), through the real command lines;
4. evaluates them on the held-out content (test_DistillationIQA.py, fp32), with scatter plots and the t-SNE of the
   students' HQ-LQ difference features w/ and w/o KD (--tsne, --tsne_compare);
5. scores one held-out photo at every distortion level (test_DistillationIQA_single.py --figure);
6. writes demo_output/results.json (teacher, student, student_no_kd, settings) and prints a table and the time of
   each step, then a command that scores an image with the KD student (STUDENT_CHECKPOINT).

Settings (DEMO_NETWORK, DEMO_TRAINING, DEMO_STUDENT and the epoch defaults below): patch 80, 2 patches per
sample, batch 8, heads at lr 1e-3 (--lr 1e-4 --lr_ratio 10), KD --feature_loss_ratio 1e-5, teacher 3 epochs,
students 2 epochs, 1 test round; the checkpoints used are the last epoch's (nothing is chosen on the held-out
content). The backbone is torchvision's ImageNet ResNet-50, as in the original, when it is in torchvision's cache
or downloads within IMAGENET_TIMEOUT_S; offline it is random and frozen, and its BatchNorm is kept in eval mode
(--freeze_backbone_bn), without which it cannot learn. The output and results.json (settings.backbone_source) say
which.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_MARKER = ".cvrkd_demo_output"  # marks a folder the demo made, so that it may clear its own step folders
STEP_FOLDERS = ("teacher", "student", "student_no_kd", "test", "test_no_kd", "synthetic_examples", "plots", "logs")
TIME_GOAL_S = 600  # the whole demo, every step, in fp32 on 2 CPU cores
BF16_MIN_SPEEDUP = 1.25  # bf16 is used only when a measured training step is at least this much faster than fp32

# Reduced sizes (the network is the real one): 2 patches of 80 px per sample. On a 2-core AVX2 CPU in fp32 the
# frozen backbone costs ~0.05 s per 96-px patch and the trainable heads ~0.11 s per sample (one core, measured),
# so a student sample (8 backbone passes: its own and the teacher's) costs ~0.5 s at 96 px; 80 px cuts the
# backbone's share by about a third. Measured in fp32 with two threads: 632-648 s in all, still over the
# 10-minute goal (TIME_GOAL_S).
DEMO_NETWORK = ["--patch_size", "80", "--self_patch_num", "2", "--distillation_layer", "18", "--num_workers", "0"]
# Heads at lr 1e-4 x 10; the backbone's BatchNorm frozen (random backbone).
DEMO_TRAINING = ["--batch_size", "8", "--lr", "1e-4", "--lr_ratio", "10", "--freeze_backbone_bn",
                 "--overwrite"]
# The KD feature loss scaled down: the difference features of a random backbone are large (a summed MSE of
# ~6e3 at the start, against an L1 of ~1). 1e-5 was chosen on a validation split of the *training* contents
# (3 folds by photo, heads trained on cached backbone features; mean validation SRCC of the student after 2
# epochs: 0.20 at 1e-5, 0.17 at 1e-4, 0.09 at 1e-6, 0.02 without KD). The student without KD differs only in
# this number (0).
DEMO_STUDENT = ["--feature_loss_ratio", "1e-5"]
DEMO_STUDENT_NO_KD = ["--feature_loss_ratio", "0"]
DEFAULT_TEACHER_EPOCHS = 3
DEFAULT_STUDENT_EPOCHS = 2
IMAGENET_TIMEOUT_S = 30  # the wait for the ImageNet weights' connection and each read
STUDENT_CHECKPOINT = Path("student") / "models" / "last.pth"  # under --out: the KD student the demo leaves
# Offline (random backbone), what the run can and cannot show; printed as its last lines.
RANDOM_BACKBONE_NOTE = (
    "This run used a random frozen backbone (no ImageNet weights offline). It shows the whole method running and the "
    "FR-teacher learning: quality is in the aligned HQ - LQ difference even of random features. It cannot show the "
    "student ranking quality on unseen content: that needs ImageNet features, which this run did not have.")


def choose_backbone(timeout_s: float = IMAGENET_TIMEOUT_S) -> tuple[str, str]:
    """--pretrained for the scripts and where the backbone comes from: ImageNet weights from torchvision's cache,
    else downloaded (as the original did), else a random frozen backbone (offline)."""
    from models.DistillationIQA import download_imagenet_weights, imagenet_weights_cache_path

    if imagenet_weights_cache_path().is_file():
        return "true", "imagenet (torchvision's cache)"
    try:
        download_imagenet_weights(timeout_s)
    except UserError as err:
        return "false", f"random (frozen, BN eval mode): no ImageNet weights in torchvision's cache and {err}"
    return "true", "imagenet (downloaded)"


def repeated_options(args: list[str]) -> list[str]:
    """The options (`--name`) given more than once in `args`."""
    names = [arg for arg in args if arg.startswith("--")]
    return sorted({name for name in names if names.count(name) > 1})


def command_line(script: str, args: list[str]) -> str:
    """The command as a user would type it (quoted for a POSIX shell)."""
    return shlex.join(["python", script, *args])


def single_image_command(out: Path, data: Path) -> str:
    """Score one held-out image with the demo's KD student: a command that works after the demo."""
    return command_line("test_DistillationIQA_single.py", [
        "--studentNet_model_path", str(out / STUDENT_CHECKPOINT), *DEMO_NETWORK[:4],
        "--lq", str(data / "TID2013" / "distorted_images" / "i01_08_3.bmp"),
        "--ref", str(data / "DIV2K_ref" / "val_HR")])


def run_step(title: str, script: str, args: list[str], log_dir: Path, log_name: str | None = None) -> float:
    """Run one of the project's scripts as a user would; its output goes to a log file."""
    if repeated_options(args):
        raise ValueError(f"demo step {title!r} repeats {repeated_options(args)}")
    cmd = [sys.executable, script, *args]
    print(f"\n== {title}\n   $ {command_line(script, args)}", flush=True)
    start = time.perf_counter()
    log_path = log_dir / f"{log_name or Path(script).stem}.log"
    with open(log_path, "w") as log:
        result = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    lines = log_path.read_text().splitlines()
    if result.returncode != 0:
        print("\n".join(lines[-30:]))
        raise SystemExit(f"demo step failed: {title} (log: {log_path})")
    for line in lines:
        if line.startswith(("round 1 epoch", "round 0:", "student ", "teacher ")) or "written to" in line:
            print(f"   {line}")
    print(f"   ({seconds:.0f} s)")
    return seconds


def training_curves(folders: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for name, folder in folders.items():
        with open(folder / "results" / "metrics.csv") as handle:
            rows = list(csv.DictReader(handle))
        epochs = [int(r["epoch"]) for r in rows]
        ax.plot(epochs, [float(r["train_srcc"]) for r in rows], marker="o", label=f"{name}: train SRCC")
    ax.set_xlabel("epoch")
    ax.set_ylabel("SRCC on the training samples of the epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


# ---- precision: decided by measurement ---------------------------------------------------------------
def decide_bf16(native: bool, fp32_seconds: float | None, bf16_seconds: float | None,
                min_speedup: float = BF16_MIN_SPEEDUP) -> tuple[bool, str]:
    """bf16 only where the CPU has bf16 units (flags) and a measured step is `min_speedup` times faster."""
    if not native:
        return False, "fp32: this CPU has no AVX512-BF16/AMX (bf16 would be emulated, slower than fp32)"
    if not fp32_seconds or not bf16_seconds:
        return False, "fp32: the bf16 timing could not be measured"
    speedup = fp32_seconds / bf16_seconds
    if speedup >= min_speedup:
        return True, f"bf16 autocast: a training step measured {speedup:.2f}x faster than fp32"
    return False, f"fp32: bf16 measured only {speedup:.2f}x as fast as fp32 (needs {min_speedup:.2f}x)"


def time_training_step(dtype, steps: int = 2) -> float:
    """Seconds per teacher training step of the real network at the demo's sizes (random data, after a warm-up)."""
    import torch
    import torch.nn.functional as F

    from models.DistillationIQA import DistillationIQANet

    size, patches, batch = int(DEMO_NETWORK[1]), int(DEMO_NETWORK[3]), int(DEMO_TRAINING[1])
    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=patches, distillation_layer=18, pretrained=False, backbone_bn_eval=True)
    optimizer = torch.optim.Adam(net.trainable_parameters(), lr=1e-4)
    lq, hq = torch.randn(2, batch, patches, 3, size, size)
    label = torch.rand(batch)
    timings = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            _, _, pred = net(lq, hq)
            loss = F.l1_loss(pred.float(), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - start)
    return min(timings[1:])


def choose_precision(amp: str) -> tuple[str, str]:
    """The --amp value for the demo's training ('off' or 'bf16') and why."""
    if amp != "auto":
        return amp, f"{'bf16 autocast' if amp == 'bf16' else 'fp32'} (asked with --amp {amp})"
    from tools.utils import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    fp32 = bf16 = None
    if native:
        import torch

        fp32, bf16 = time_training_step(None), time_training_step(torch.bfloat16)
    use_bf16, why = decide_bf16(native, fp32, bf16)
    return ("bf16" if use_bf16 else "off"), why


# ---- the demo ----------------------------------------------------------------------------------------
def prepare_output(out: Path) -> None:
    """Make `out` (or reuse one the demo made, clearing its step folders); never touch another folder."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / OUTPUT_MARKER).exists())):
        raise UserError(f"--out {out} exists and was not made by the demo; choose a new or empty folder")
    for name in STEP_FOLDERS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text("made by python -m tools.demo\n")


def write_student_init(teacher_ckpt: Path, path: Path) -> Path:
    """The teacher's weights as a plain state dict, the students' starting point (--studentNet_model_path
    refuses a checkpoint recorded as the teacher's, so that one role's file is not taken for the other's)."""
    from common.files import atomic_torch_save, safe_torch_load
    from models.DistillationIQA import extract_state_dict

    atomic_torch_save(extract_state_dict(safe_torch_load(teacher_ckpt), str(teacher_ckpt)), path)
    return path


def synthetic_examples(data: Path, out: Path, content: int = 1) -> list[str]:
    """One held-out photo (TID2013-format reference `content`) and its distorted images, one folder per type:
    `level 0 (reference).bmp`, `level 1.bmp` ... (the rows of the examples figure)."""
    from tools.demo_data import TID_TYPE_IDS

    tid = data / "TID2013"
    folders = []
    for name, type_id in sorted(TID_TYPE_IDS.items(), key=lambda item: item[1]):
        folder = out / "synthetic_examples" / name.replace("_", " ")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tid / "reference_images" / f"I{content:02d}.BMP", folder / "level 0 (reference).bmp")
        for image in sorted((tid / "distorted_images").glob(f"i{content:02d}_{type_id:02d}_*.bmp")):
            shutil.copyfile(image, folder / f"level {image.stem.rsplit('_', 1)[1]}.bmp")
        folders.append(str(folder))
    return folders


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="CVRKD-IQA demo on scikit-image's photos (offline if need be).")
    parser.add_argument("--data", default="demo_data", help="where the demo dataset is built")
    parser.add_argument("--out", default="demo_output", help="where checkpoints, plots and results go")
    parser.add_argument("--teacher_epochs", type=int, default=DEFAULT_TEACHER_EPOCHS)
    parser.add_argument("--student_epochs", type=int, default=DEFAULT_STUDENT_EPOCHS)
    parser.add_argument("--test_rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the crops and the initialisation")
    parser.add_argument("--amp", choices=["auto", "off", "bf16"], default="auto",
                        help="training precision: auto = bf16 only where measured faster (docs/demo.md), off = fp32")
    return parser


def build_data(data: Path, seed: int) -> tuple[str, str]:
    """Step 1: the demo dataset and the backbone; returns --pretrained for the scripts and the backbone's source."""
    from tools.demo_data import LABEL_RULE, build_demo_dataset

    print("== demo data: real photographs shipped with scikit-image, distorted KADID-style")
    summary = build_demo_dataset(data, seed=seed, overwrite=True)
    print(f"   train contents {summary['train_contents']} -> {data}/kadid10k ({summary['kadid_images']} images)")
    print(f"   held-out contents {summary['test_contents']} -> {data}/TID2013 ({summary['tid_images']} images)")
    print(f"   reference pools: {len(summary['ref_train'])} training, {len(summary['ref_test'])} testing views "
          "of the other photos")
    print(f"   label rule: {LABEL_RULE.splitlines()[0]}")
    pretrained, source = choose_backbone()
    print(f"   backbone: {source}")
    return pretrained, source


def train_models(args: argparse.Namespace, out: Path, training: list[str], times: dict[str, float]) -> dict:
    """Step 3: the teacher, then the students with and without KD; their checkpoints by name."""
    logs = out / "logs"
    teacher_ckpt = out / "teacher" / "models" / "last.pth"
    times["teacher"] = run_step(
        "FR-teacher (LQ + aligned HQ), cross-dataset: KADID-format -> TID2013-format", "train_DistillationIQA_FR.py",
        [*training, "--epochs", str(args.teacher_epochs), "--checkpoint_dir", str(out / "teacher")], logs)
    student_init = write_student_init(teacher_ckpt, out / "teacher" / "student_init.pth")
    checkpoints = {"teacher": teacher_ckpt}
    for name, title, options in (("student", "NAR-student with KD from the frozen teacher", DEMO_STUDENT),
                                 ("student_no_kd", "the same NAR-student without KD", DEMO_STUDENT_NO_KD)):
        times[name] = run_step(
            f"{title} (starts from the teacher's weights)", "train_DistillationIQA.py",
            [*training, *options, "--epochs", str(args.student_epochs), "--checkpoint_dir", str(out / name),
             "--teacherNet_model_path", str(teacher_ckpt), "--studentNet_model_path", str(student_init)], logs,
            log_name=name)
        checkpoints[name] = out / STUDENT_CHECKPOINT if name == "student" else out / name / "models" / "last.pth"
    return checkpoints


def evaluate_models(args: argparse.Namespace, out: Path, data: Path, common: list[str], models: dict,
                    times: dict[str, float]) -> dict:
    """Steps 4-5: the held-out evaluation (with plots and t-SNE) and the synthetic examples; the three rows."""
    logs, evaluation = out / "logs", [*common, "--test_rounds", str(args.test_rounds)]
    times["test"] = run_step(
        "evaluation on the held-out content (fp32): student with KD and teacher; t-SNE w/ and w/o KD",
        "test_DistillationIQA.py",
        [*evaluation, "--studentNet_model_path", str(models["student"]), "--teacherNet_model_path",
         str(models["teacher"]), "--checkpoint_dir", str(out / "test"), "--plot", str(out / "plots"), "--tsne",
         str(out / "plots"), "--tsne_compare", str(models["student_no_kd"])], logs)
    times["test_no_kd"] = run_step(
        "evaluation on the held-out content (fp32): student without KD", "test_DistillationIQA.py",
        [*evaluation, "--studentNet_model_path", str(models["student_no_kd"]), "--checkpoint_dir",
         str(out / "test_no_kd")], logs, log_name="test_no_kd")
    times["single"] = run_step(
        "synthetic examples: one held-out photo, every distortion at levels 0..5, scored by the KD student",
        "test_DistillationIQA_single.py",
        [*DEMO_NETWORK[:4], "--gpu_ids", "cpu", "--lq", *synthetic_examples(data, out), "--ref",
         str(data / "DIV2K_ref" / "val_HR"), "--repeats", "3", "--studentNet_model_path", str(models["student"]),
         "--output", str(out / "single_scores.csv"), "--figure", str(out / "plots" / "synthetic_examples.png")], logs)
    training_curves({"teacher": out / "teacher", "student": out / "student", "student without KD":
                     out / "student_no_kd"}, out / "plots" / "training_curves.png")
    tested = json.loads((out / "test" / "results" / "test_results.json").read_text())
    tested_no_kd = json.loads((out / "test_no_kd" / "results" / "test_results.json").read_text())
    return {"teacher": tested["teacher"]["tid2013"], "student": tested["student"]["tid2013"],
            "student_no_kd": tested_no_kd["student"]["tid2013"]}


def demo_settings(args: argparse.Namespace, pretrained: str, source: str, amp: str, why: str) -> dict:
    """The `settings` entry of results.json."""
    from tools.demo_data import LABEL_RULE

    return {"backbone": "imagenet" if pretrained == "true" else "random (frozen, BN eval mode)",
            "backbone_source": source,
            "seed": args.seed, "precision": amp, "precision_reason": why,
            "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
            "test_rounds": args.test_rounds, "checkpoints": "last epoch (no choice on held-out data)",
            "options": {"network": DEMO_NETWORK, "training": DEMO_TRAINING, "student": DEMO_STUDENT,
                        "student_no_kd": DEMO_STUDENT_NO_KD,
                        "student_init": "the teacher's weights (teacher/student_init.pth)"},
            "label_rule": LABEL_RULE}


def print_summary(results: dict, times: dict[str, float], out: Path, data: Path, total: float) -> None:
    print("\n== held-out content (TID2013-format), mean over test rounds")
    print(f"   {'model':<14} {'SRCC':>7} {'PLCC':>7} {'KRCC':>7}")
    for role in ("teacher", "student", "student_no_kd"):
        m = results[role]
        print(f"   {role:<14} {m['srcc']:>7.3f} {m['plcc']:>7.3f} {m['krcc']:>7.3f}")
    print("\n== time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"   results: {out / 'results.json'}; figures: {out / 'plots'}; total {total:.0f} s "
          f"(goal: within {TIME_GOAL_S} s in fp32 on 2 CPU cores)")
    print(f"\n== score an image with the KD student:\n   {single_image_command(out, data)}")
    if results["settings"]["backbone"] != "imagenet":
        print(f"\n{RANDOM_BACKBONE_NOTE}")


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    start = time.perf_counter()
    os.chdir(ROOT)
    out, data = Path(args.out), Path(args.data)
    prepare_output(out)
    from common.files import write_json

    times: dict[str, float] = {}
    tick = time.perf_counter()
    pretrained, source = build_data(data, args.seed)
    times["data"] = time.perf_counter() - tick
    tick = time.perf_counter()
    amp, why = choose_precision(args.amp)
    times["precision"] = time.perf_counter() - tick
    print(f"   precision for training: {why}; evaluation in fp32")

    common = [*DEMO_NETWORK, "--dataset_dir", str(data), "--pretrained", pretrained, "--seed", str(args.seed),
              "--gpu_ids", "cpu"]
    # The training runs evaluate on no test set (--test_datasets ""): the demo uses their last epoch and tests it
    # once afterwards, which saves a held-out evaluation per epoch (~80 s of the 10 minutes).
    models = train_models(args, out, [*common, "--test_datasets", "", *DEMO_TRAINING, "--amp", amp], times)
    results = evaluate_models(args, out, data, [*common, "--test_datasets", "tid2013"], models, times)
    total = time.perf_counter() - start
    results["settings"] = demo_settings(args, pretrained, source, amp, why)
    results["settings"]["seconds"] = {**{k: round(v, 1) for k, v in times.items()}, "total": round(total, 1)}
    write_json(out / "results.json", results)
    print_summary(results, times, out, data, total)
    return results


if __name__ == "__main__":
    from common.errors import run_cli

    run_cli(main)
