"""Training speed of the FR-teacher and the NAR-student on generated data at reduced sizes.

Runs `tools.epoch.train_one_epoch` (the loop the scripts use) on the offline demo data and prints
samples/s, steps/s and the share of the time spent waiting for data vs. computing.

    python benchmarks/bench_train.py [--patch_size 96] [--self_patch_num 4] [--batch_size 8] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dataloaders import build_dataset, build_loader, list_reference_images  # noqa: E402
from models.DistillationIQA import DistillationIQANet  # noqa: E402
from tools.demo_data import build_demo_dataset  # noqa: E402
from tools.epoch import Distillation, make_optimizer, train_one_epoch  # noqa: E402
from tools.runtime import Run  # noqa: E402
from tools.utils import DistInfo, resolve_precision  # noqa: E402


def run(role: str, data: Path, args, workers: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    make = lambda: DistillationIQANet(self_patch_num=args.self_patch_num, distillation_layer=18,  # noqa: E731
                                      pretrained=False, backbone_bn_eval=True).to(device)
    model, teacher = make(), None
    mode = "lq_hq"
    if role == "student":
        teacher, mode = make().eval(), "lq_hq_ref"
        for p in teacher.parameters():
            p.requires_grad = False
    refs = list_reference_images(data / "DIV2K_ref" / "train_HR")
    dataset = build_dataset("kadid10k", data / "kadid10k", mode, patch_size=args.patch_size,
                            patch_num=args.self_patch_num, train=True, ref_paths=refs,
                            content_ids=list(range(args.contents)))
    loader = build_loader(dataset, args.batch_size, shuffle=True, num_workers=workers, drop_last=True)
    run_info = Run(DistInfo(), device, resolve_precision(args.amp, device))
    optimizer = make_optimizer(model, 1e-4, 10, 5e-4)
    scaler = run_info.precision.scaler()
    kd = Distillation(teacher) if teacher is not None else None
    train_one_epoch(model, loader, optimizer, scaler, run_info, 0, kd=kd)  # warm-up epoch
    stats = train_one_epoch(model, loader, optimizer, scaler, run_info, 1, kd=kd)
    stats["steps_per_s"] = stats["samples_per_s"] / args.batch_size
    stats["samples"] = len(loader) * args.batch_size
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch_size", type=int, default=96)
    parser.add_argument("--self_patch_num", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--contents", type=int, default=2, help="training contents used (35 samples each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=["off", "fp16", "bf16", "auto"])
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, threads {torch.get_num_threads()}, patch {args.patch_size} x {args.self_patch_num}, "
          f"batch {args.batch_size}, amp {args.amp}; backbone frozen (BN eval), random weights")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        build_demo_dataset(data, seed=0)
        header = ("role", "workers", "samples", "samples/s", "steps/s", "data", "compute")
        print("\n{:<8} {:>7} {:>8} {:>10} {:>8} {:>6} {:>8}".format(*header))
        for role in ("teacher", "student"):
            for workers in args.workers:
                s = run(role, data, args, workers, device)
                print(f"{role:<8} {workers:>7} {s['samples']:>8} {s['samples_per_s']:>10.2f} "
                      f"{s['steps_per_s']:>8.2f} {100 * s['data_share']:>5.0f}% {100 * (1 - s['data_share']):>7.0f}%")


if __name__ == "__main__":
    main()
