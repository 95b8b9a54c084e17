"""`make demo`: the whole method on real photographs, offline, on a CPU, in a few minutes.

1. builds the demo data (tools/demo_data.py): KADID-format training set, TID2013-format held-out content,
   DIV2K-style reference pools — all from the photos scikit-image ships;
2. trains the FR-teacher, then the NAR-student with KD, through the real command lines;
3. evaluates both on the held-out content (test_DistillationIQA.py, with scatter plots);
4. scores a few images with test_DistillationIQA_single.py;
5. writes demo_output/results.json and prints a table.

Reduced settings (patch 64, 4 patches per sample, batch 8, a few epochs, heads at lr 1e-3) keep it within
about 10 minutes on 2 CPU cores. Without ImageNet weights in torchvision's cache the backbone is random and
frozen, and its BatchNorm is kept in eval mode (--freeze_backbone_bn), without which it cannot learn.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Reduced sizes (the network is the real one): 2 patches of 128 px per sample.
DEMO_NETWORK = ["--patch_size", "128", "--self_patch_num", "2", "--distillation_layer", "18", "--num_workers", "0"]
# Heads at lr 1e-4 x 10; the backbone's BatchNorm frozen (random backbone); the KD feature loss scaled down, since
# the difference features of a random backbone are large (an MSE of ~1e4 at the start, against an L1 of ~1).
DEMO_TRAINING = ["--batch_size", "8", "--lr", "1e-4", "--lr_ratio", "10", "--freeze_backbone_bn", "--overwrite"]
DEMO_STUDENT = ["--feature_loss_ratio", "1e-4"]


def imagenet_weights_available() -> bool:
    from models.DistillationIQA import imagenet_weights_cache_path

    return imagenet_weights_cache_path().is_file()


def run_step(title: str, script: str, args: list[str], log_dir: Path) -> float:
    """Run one of the project's scripts as a user would; its output goes to a log file."""
    cmd = [sys.executable, script, *args]
    print(f"\n== {title}\n   $ python {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    log_path = log_dir / f"{Path(script).stem}.log"
    with open(log_path, "w") as log:
        result = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    lines = log_path.read_text().splitlines()
    if result.returncode != 0:
        print("\n".join(lines[-30:]))
        raise SystemExit(f"demo step failed: {title} (log: {log_path})")
    for line in lines:
        if line.startswith(("round 1 epoch", "round 0:", "student ", "teacher ", "demo_data/")) or "best SRCC" in line:
            print(f"   {line}")
    print(f"   ({seconds:.0f} s)")
    return seconds


def training_curves(folders: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, folder in folders.items():
        with open(folder / "results" / "metrics.csv") as handle:
            rows = list(csv.DictReader(handle))
        epochs = [int(r["epoch"]) for r in rows]
        ax.plot(epochs, [float(r["tid2013_srcc"]) for r in rows], marker="o", label=f"{name}: held-out SRCC")
        ax.plot(epochs, [float(r["train_srcc"]) for r in rows], ls="--", label=f"{name}: train SRCC")
    ax.set_xlabel("epoch")
    ax.set_ylabel("SRCC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Offline CVRKD-IQA demo on scikit-image's photos.")
    parser.add_argument("--data", default="demo_data", help="where the demo dataset is built")
    parser.add_argument("--out", default="demo_output", help="where checkpoints, plots and results go")
    parser.add_argument("--teacher_epochs", type=int, default=10)
    parser.add_argument("--student_epochs", type=int, default=3)
    parser.add_argument("--test_rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    os.chdir(ROOT)
    out, data = Path(args.out), Path(args.data)
    (out / "logs").mkdir(parents=True, exist_ok=True)

    from tools.checkpoint import write_json
    from tools.demo_data import LABEL_RULE, build_demo_dataset
    from tools.utils import cpu_has_native_bf16

    print("== demo data: real photographs shipped with scikit-image, distorted KADID-style")
    summary = build_demo_dataset(data, seed=args.seed, overwrite=True)
    print(f"   train contents {summary['train_contents']} -> {data}/kadid10k ({summary['kadid_images']} images)")
    print(f"   held-out contents {summary['test_contents']} -> {data}/TID2013 ({summary['tid_images']} images)")
    print(f"   label rule: {LABEL_RULE.splitlines()[0]}")
    if imagenet_weights_available():
        pretrained = "true"
        print("   backbone: ImageNet ResNet-50 weights from torchvision's cache")
    else:
        pretrained = "false"
        print("   backbone: no ImageNet weights in torchvision's cache -> frozen random ResNet-50 (offline demo)")

    amp = "bf16" if cpu_has_native_bf16() else "off"
    print(f"   precision: {'bf16 autocast (this CPU has native bf16)' if amp == 'bf16' else 'fp32'}")
    common = [*DEMO_NETWORK, "--dataset_dir", str(data), "--pretrained", pretrained, "--seed", str(args.seed),
              "--test_datasets", "tid2013", "--gpu_ids", "cpu"]
    training = [*common, *DEMO_TRAINING, "--amp", amp]
    teacher_dir, student_dir, test_dir = out / "teacher", out / "student", out / "test"
    times = {}
    times["teacher"] = run_step("FR-teacher (LQ + aligned HQ), cross-dataset: KADID-format -> TID2013-format",
                                "train_DistillationIQA_FR.py",
                                [*training, "--epochs", str(args.teacher_epochs), "--checkpoint_dir", str(teacher_dir)],
                                out / "logs")
    teacher_ckpt = teacher_dir / "models" / "best.pth"
    times["student"] = run_step("NAR-student (LQ + non-aligned reference) with KD from the frozen teacher",
                                "train_DistillationIQA.py",
                                [*training, *DEMO_STUDENT, "--epochs", str(args.student_epochs), "--checkpoint_dir",
                                 str(student_dir), "--teacherNet_model_path", str(teacher_ckpt)], out / "logs")
    student_ckpt = student_dir / "models" / "best.pth"
    times["test"] = run_step("evaluation on the held-out content (fp32)", "test_DistillationIQA.py",
                             [*common, "--studentNet_model_path", str(student_ckpt), "--teacherNet_model_path",
                              str(teacher_ckpt), "--test_rounds", str(args.test_rounds), "--checkpoint_dir",
                              str(test_dir), "--plot", str(out / "plots")], out / "logs")
    blur = sorted((data / "TID2013" / "distorted_images").glob("i01_08_*.bmp"))
    times["single"] = run_step("single-image scoring: one held-out photo, blur levels 1..5",
                               "test_DistillationIQA_single.py",
                               [*DEMO_NETWORK[:4], "--gpu_ids", "cpu", "--lq", *map(str, blur), "--ref",
                                str(data / "DIV2K_ref" / "val_HR"), "--repeats", "3", "--studentNet_model_path",
                                str(student_ckpt), "--output", str(out / "single_scores.csv")], out / "logs")
    training_curves({"teacher": teacher_dir, "student": student_dir}, out / "plots" / "training_curves.png")

    tested = json.loads((test_dir / "results" / "test_results.json").read_text())
    results = {role: tested[role]["tid2013"] for role in ("teacher", "student")}
    results["settings"] = {"backbone": "imagenet" if pretrained == "true" else "random (frozen, BN eval mode)",
                           "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
                           "test_rounds": args.test_rounds,
                           "options": {"network": DEMO_NETWORK, "training": DEMO_TRAINING, "student": DEMO_STUDENT},
                           "label_rule": LABEL_RULE, "seconds": {k: round(v, 1) for k, v in times.items()}}
    write_json(out / "results.json", results)
    print("\n== held-out content (TID2013-format), mean over test rounds")
    print(f"   {'model':<8} {'SRCC':>7} {'PLCC':>7} {'KRCC':>7}")
    for role in ("teacher", "student"):
        m = results[role]
        print(f"   {role:<8} {m['srcc']:>7.3f} {m['plcc']:>7.3f} {m['krcc']:>7.3f}")
    print(f"\n   results: {out / 'results.json'}; plots: {out / 'plots'}; total {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    from tools.errors import run_cli

    run_cli(main)
