"""`make gpu-check`: every open GPU question measured by one command, on data it generates, time-boxed to end
within 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py [--dry-run] [--out DIR]      (make gpu-check ARGS=--dry-run)

Writes gpu_check.json and gpu_check.md to --out, else $OUT when set, else ./gpu_check/. Sections:
A environment, B torchrun runs of the real scripts (+ resume, CPU<->CUDA checkpoints), C numerics on one batch,
D determinism, E the scorer, F throughput at the paper's settings vs the bare ResNet-50 and the original
procedure, G `pytest -m cuda`. `--dry-run` runs every section at tiny sizes (on the CPU, or a GPU): the JSON
has every field, with the CPU's numbers; what only a GPU can measure says "not applicable on cpu".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import gpu_check_speed as speed  # noqa: E402
from tools.dataset_fixtures import make_kadid, make_ref_pool  # noqa: E402
from tools.utils import available_cpus, configure_cuda, default_num_workers, tf32_flags  # noqa: E402

NOT_ON_CPU = "not applicable on cpu"
SKIPPED_DRY = "skipped in the dry run"


@dataclass(frozen=True)
class Sizes:
    """What the check generates and runs at. GPU: the real sizes; dry run: the smallest that exercise the code."""

    lq: tuple[int, int]  # (width, height) of the distorted images
    ref: tuple[int, int]  # of the reference images (aligned HQ and the non-aligned pool)
    contents: int  # reference contents of the generated KADID-like set (4 distorted images each)
    refs: int  # images in the non-aligned reference pool
    patch: int
    crops: int  # --self_patch_num
    batch: int
    steps: int  # measured training steps in F
    epochs: int  # of each run in B and D
    fp16_steps: int  # C's fp16 steps
    mlp_depth: int  # of the in-process networks (C-F); 9 is the real network's
    budgets: dict  # seconds per section


GPU_SIZES = Sizes(lq=(512, 384), ref=(2040, 1356), contents=16, refs=4, patch=224, crops=10, batch=32, steps=6,
                  epochs=2, fp16_steps=50, mlp_depth=9,
                  budgets={"A": 15, "B": 170, "C": 40, "D": 80, "E": 30, "F": 110, "G": 60})
# The dry run checks the script, not the speed: generous time boxes (a busy CI machine), one step per epoch.
DRY_SIZES = Sizes(lq=(40, 32), ref=(48, 40), contents=1, refs=1, patch=32, crops=1, batch=4, steps=1,
                  epochs=1, fp16_steps=2, mlp_depth=1,
                  budgets={"A": 60, "B": 300, "C": 120, "D": 120, "E": 120, "F": 300, "G": 60})


# ---- data -----------------------------------------------------------------------------------------------------
def make_data(root: Path, sizes: Sizes) -> Path:
    """A KADID-10k-like set (2 types x 2 levels per content) and the DIV2K-like reference pools, under `root`."""
    make_kadid(root / "kadid10k", n_refs=sizes.contents, n_types=2, n_levels=2, size=sizes.lq)
    for pool in ("train_HR", "val_HR"):
        make_ref_pool(root / "DIV2K_ref" / pool, n=sizes.refs, size=sizes.ref)
    return root


def script_options(data: Path, sizes: Sizes, gpu_ids: str) -> list[str]:
    """The command-line options every run of B and D shares."""
    return ["--dataset_dir", str(data), "--train_dataset", "kadid10k", "--test_dataset", "live",
            "--test_datasets", "kadid10k", "--patch_size", str(sizes.patch), "--self_patch_num", str(sizes.crops),
            "--batch_size", str(sizes.batch), "--pretrained", "false", "--gpu_ids", gpu_ids,
            "--ref_cache_gb", "0", "--net_print", "1000000"]


# ---- time boxes --------------------------------------------------------------------------------------------------
class Section:
    """One section's results, each measured only while its time box lasts; an error is recorded, not raised."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.perf_counter() + budget_s
        self.values: dict = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def measure(self, key: str, fn: Callable[[], object]) -> object:
        if self.left() <= 0:
            self.values[key] = "skipped: the section's time box was used up"
            return None
        try:
            value = fn()
        except Exception as err:  # a failed measurement is a result of the check
            value = f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if isinstance(value, dict):
            self.values.update({f"{key}.{k}" if key else k: v for k, v in value.items()})
        else:
            self.values[key] = value
        return value


def run_command(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """A subprocess's exit status, seconds and last output line."""
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, timeout),
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": round(time.perf_counter() - start, 1), "detail": "timed out"}
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return {"ok": done.returncode == 0, "seconds": round(time.perf_counter() - start, 1),
            "detail": lines[-1][:200] if lines else f"exit status {done.returncode}"}


# ---- A. environment ----------------------------------------------------------------------------------------------
def section_a(cuda: bool) -> dict:
    configure_cuda(deterministic=False)
    shm = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
    gpu = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else NOT_ON_CPU,
        "cudnn": str(torch.backends.cudnn.version()) if cuda else NOT_ON_CPU,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else NOT_ON_CPU,
        "gpu": gpu.name if gpu else NOT_ON_CPU,
        "gpu_memory_gib": round(gpu.total_memory / 2**30, 1) if gpu else NOT_ON_CPU,
        "cpu": _cpu_name(), "cpus_available": available_cpus(), "default_num_workers": default_num_workers(),
        "dev_shm_gib": round(shm.total / 2**30, 1) if shm else "no /dev/shm",
        "tf32_matmul": tf32_flags()["matmul"], "tf32_cudnn": tf32_flags()["cudnn"],
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---- B. torchrun runs of the real scripts ------------------------------------------------------------------------
def torchrun(script: str, options: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", script, *options]


def section_b(section: Section, data: Path, work: Path, sizes: Sizes, cuda: bool, dry: bool) -> None:
    gpu_ids = "0" if cuda else "cpu"
    base = script_options(data, sizes, gpu_ids) + (["--num_workers", "0"] if dry else [])  # dry: no worker start
    teacher_dir, student_dir = work / "b_teacher", work / "b_student"
    epochs = ["--epochs", str(sizes.epochs)]
    more = ["--epochs", str(sizes.epochs + 1), "--resume"]

    def timed(cmd: list[str]) -> dict:
        return run_command(cmd, section.left())

    section.measure("teacher", lambda: timed(torchrun("train_DistillationIQA_FR.py",
                                                      [*base, *epochs, "--checkpoint_dir", str(teacher_dir)])))
    section.measure("teacher_resume", lambda: timed(torchrun("train_DistillationIQA_FR.py",
                                                             [*base, *more, "--checkpoint_dir", str(teacher_dir)])))
    teacher = teacher_dir / "models" / "last.pth"
    student = [*base, "--teacherNet_model_path", str(teacher), "--checkpoint_dir", str(student_dir)]
    if dry:
        section.values.update({"student": SKIPPED_DRY, "student_resume": SKIPPED_DRY})
    else:
        section.measure("student", lambda: timed(torchrun("train_DistillationIQA.py", [*student, *epochs])))
        section.measure("student_resume", lambda: timed(torchrun("train_DistillationIQA.py", [*student, *more])))
    if not cuda:
        section.values.update({"cpu_checkpoint_resumed_on_cuda": NOT_ON_CPU,
                               "cuda_checkpoint_loaded_on_cpu_only": NOT_ON_CPU})
        return
    cpu_dir = work / "b_cpu_written"
    cpu_base = script_options(data, sizes, "cpu")
    section.measure("cpu_checkpoint_written", lambda: timed(torchrun(
        "train_DistillationIQA_FR.py", [*cpu_base, "--epochs", "1", "--checkpoint_dir", str(cpu_dir)])))
    section.measure("cpu_checkpoint_resumed_on_cuda", lambda: timed(torchrun(
        "train_DistillationIQA_FR.py", [*base, "--epochs", "2", "--resume", "--checkpoint_dir", str(cpu_dir)])))
    load = ("import sys, torch; assert not torch.cuda.is_available(); c = torch.load(sys.argv[1], "
            "weights_only=False); print('loaded on the CPU:', len(c.get('model', c)), 'entries')")
    section.measure("cuda_checkpoint_loaded_on_cpu_only", lambda: run_command(
        [sys.executable, "-c", load, str(teacher)], section.left(), env={"CUDA_VISIBLE_DEVICES": ""}))


# ---- D. determinism --------------------------------------------------------------------------------------------
def _train_in_process(options: list[str]) -> dict:
    from option_train_DistillationIQA_FR import set_args
    from train_DistillationIQA_FR import main

    main(set_args(options))
    folder = Path(options[options.index("--checkpoint_dir") + 1])
    return torch.load(folder / "models" / "last.pth", map_location="cpu", weights_only=False)["model"]


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].is_floating_point()
               else float((a[k] != b[k]).any()) for k in a)


def _loop_pair(sizes) -> float:
    """Dry run: two identical one-epoch passes of the training loop on a small network (no script, no files)."""
    from tools.epoch import make_optimizer, train_one_epoch
    from tools.runtime import Run
    from tools.utils import DistInfo, resolve_precision

    loader_batches = [{"lq": torch.randint(0, 256, (2, sizes.crops, 3, sizes.patch, sizes.patch), dtype=torch.uint8,
                                           generator=torch.Generator().manual_seed(i)),
                       "label": torch.tensor([0.2, 0.7])} for i in range(2)]
    for batch in loader_batches:
        batch["hq"] = batch["lq"].flip(-1)

    class Loader(list):
        sampler = type("Sampler", (), {"set_epoch": staticmethod(lambda epoch: None)})()

    weights = []
    for _ in range(2):
        model = speed._net(torch.device("cpu"), sizes)
        run = Run(DistInfo(), torch.device("cpu"), resolve_precision("off", torch.device("cpu")))
        train_one_epoch(model, Loader(loader_batches), make_optimizer(model, 1e-4, 10, 5e-4),
                        run.precision.scaler(), run, 0)
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return _max_difference(*weights)


def section_d(section: Section, data: Path, work: Path, sizes: Sizes, cuda: bool, dry: bool) -> None:
    """Two identical runs, and save-and-resume vs uninterrupted, with and without --deterministic: the largest
    |difference| of the final weights (0.0 = bit-exact). The dry run compares two passes of the training loop
    (with the --deterministic settings) instead of two script runs."""
    if dry:
        configure_cuda(deterministic=True)
        try:
            section.measure("identical_runs_max_diff_deterministic", lambda: _loop_pair(sizes))
        finally:
            configure_cuda(deterministic=False)
        for key in ("resume_vs_uninterrupted_max_diff_deterministic", "identical_runs_max_diff_default",
                    "resume_vs_uninterrupted_max_diff_default"):
            section.values[key] = SKIPPED_DRY
        return
    base = [*script_options(data, sizes, "0" if cuda else "cpu"), "--test_datasets", "csiq"]  # not evaluated
    for name, flag in (("deterministic", ["--deterministic"]), ("default", [])):
        def pair(name=name, flag=flag) -> float:
            runs = [_train_in_process([*base, *flag, "--epochs", str(sizes.epochs), "--checkpoint_dir",
                                       str(work / f"d_{name}_{i}")]) for i in range(2)]
            return _max_difference(*runs)

        def resumed(name=name, flag=flag) -> float:
            folder = str(work / f"d_{name}_resumed")
            _train_in_process([*base, *flag, "--epochs", "1", "--checkpoint_dir", folder])
            weights = _train_in_process([*base, *flag, "--epochs", str(sizes.epochs), "--resume",
                                         "--checkpoint_dir", folder])
            whole = torch.load(work / f"d_{name}_0" / "models" / "last.pth", map_location="cpu",
                               weights_only=False)["model"]
            return _max_difference(weights, whole)

        section.measure(f"identical_runs_max_diff_{name}", pair)
        section.measure(f"resume_vs_uninterrupted_max_diff_{name}", resumed)
    configure_cuda(deterministic=False)


# ---- G. pytest -m cuda --------------------------------------------------------------------------------------------
def section_g(section: Section, cuda: bool) -> None:
    if not cuda:
        section.values["pytest_cuda"] = NOT_ON_CPU
        return
    section.measure("pytest_cuda", lambda: run_command(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], section.left()))


# ---- the report ---------------------------------------------------------------------------------------------------
TITLES = {"A": "environment", "B": "torchrun runs of the real scripts", "C": "numerics on one batch",
          "D": "determinism (largest |difference| of the final weights)", "E": "the scorer",
          "F": "throughput", "G": "pytest -m cuda"}


def markdown(report: dict) -> str:
    lines = [f"# gpu_check ({'dry run, ' if report['dry_run'] else ''}{report['device']})", "",
             f"{report['seconds']:.0f} s in all.", "", "| section | measurement | value |", "|---|---|---|"]
    for key, title in TITLES.items():
        for name, value in report["sections"][key].items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"| {key}. {title} | {name} | {value} |")
    return "\n".join(lines) + "\n"


def output_folder(out: str | None) -> Path:
    return Path(out or os.environ.get("OUT") or ROOT / "gpu_check")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes: checks the script itself, on a CPU")
    parser.add_argument("--out", default=None, help="output folder (default $OUT, else ./gpu_check)")
    args = parser.parse_args(argv)
    cuda, dry = torch.cuda.is_available(), args.dry_run
    sizes = DRY_SIZES if dry or not cuda else GPU_SIZES
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    start = time.perf_counter()
    sections: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        data = make_data(work / "data", sizes)
        steps: dict[str, Callable[[Section], None]] = {
            "A": lambda s: s.measure("", lambda: section_a(cuda)),
            "B": lambda s: section_b(s, data, work, sizes, cuda, dry),
            "C": lambda s: speed.section_c(s, sizes, device, dry),
            "D": lambda s: section_d(s, data, work, sizes, cuda, dry),
            "E": lambda s: speed.section_e(s, data, sizes, device),
            "F": lambda s: speed.section_f(s, data, sizes, device, dry),
            "G": lambda s: section_g(s, cuda),
        }
        for key, step in steps.items():
            section = Section(sizes.budgets[key])
            began = time.perf_counter()
            try:
                step(section)
            except Exception as err:  # a section that fails still leaves the others and the report
                section.values["error"] = f"{type(err).__name__}: {err}"
            section.values["seconds"] = round(time.perf_counter() - began, 1)
            sections[key] = section.values
            print(f"{key}. {TITLES[key]}: {section.values['seconds']} s", flush=True)
    report = {"dry_run": dry, "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({_cpu_name()})",
              "sizes": asdict(sizes), "seconds": round(time.perf_counter() - start, 1), "sections": sections}
    out = output_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"written to {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return report


if __name__ == "__main__":
    main()
