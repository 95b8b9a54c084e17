"""Inference speed of NAR-student scoring at the real sizes (patch 224, 10 patches), as ratios in one run.

(a) plain: what the original does — per image, the reference is read and both branches run, batch 1, fp32
(b) fast:  the project's path — reference branch once, LQ images batched, inference_mode, channels-last
(c) fast + bf16 autocast (where the CPU has native bf16)
plus whole processes: `test_DistillationIQA_single.py` vs. a plain-path script, 12 images, --repeats 1.

    python benchmarks/bench_inference.py [--images 12] [--repeats 1] [--device cpu|cuda] [--no-process]

The network has random weights (no download): timings do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

PATCH, PATCHES = 224, 10


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth random colour field with some texture, so that PNG/JPEG decoding costs what photos cost."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def make_inputs(folder: Path, n_images: int) -> tuple[list[Path], Path]:
    lq_dir = folder / "lq"
    lq_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_images):
        path = lq_dir / f"img{i:02d}.jpg"
        photo_like((512, 384), i).save(path, quality=90)
        paths.append(path)
    ref = folder / "0801.png"
    photo_like((2040, 1356), 999).save(ref)  # a DIV2K-sized reference
    return paths, ref


def plain_scores(net, lq_paths, ref_path, repeats: int, seed: int, device) -> np.ndarray:
    """The original's way: per image and repeat, read the reference, crop both, run the full network."""
    from dataloaders import load_rgb
    from dataloaders.sampling import independent_patches, to_normalized_tensor

    scores = []
    with torch.no_grad():
        for path in lq_paths:
            total = 0.0
            for r in range(repeats):
                ref = np.asarray(load_rgb(ref_path))
                rng_ref = np.random.default_rng([seed, 0, r])
                rng_ref.integers(1)  # the reference choice (one reference here), as the scorer draws it
                ref_t = to_normalized_tensor(independent_patches(ref, rng_ref, PATCH, PATCHES))[None].to(device)
                lq = np.asarray(load_rgb(path))
                lq_t = to_normalized_tensor(independent_patches(lq, np.random.default_rng([seed, 1, r]),
                                                                PATCH, PATCHES))[None].to(device)
                total += float(net(lq_t, ref_t)[2])
            scores.append(total / repeats)
    return np.array(scores)


def build_net(checkpoint: str | None = None):
    from models.DistillationIQA import DistillationIQANet

    torch.manual_seed(0)
    net = DistillationIQANet(self_patch_num=PATCHES, distillation_layer=18, pretrained=False)
    if checkpoint:
        net.load_checkpoint(checkpoint)
    return net.eval()


def timed(fn, warmup: bool = True):
    if warmup:
        fn()
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def count_flops(net, device) -> tuple[float, float, float]:
    """GFLOPs: plain path per image (both branches), fast path per image (LQ branch + heads), reference once."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, PATCHES, 3, PATCH, PATCH, device=device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as plain:
            net(x, x)
        with FlopCounterMode(display=False) as ref_once:
            codes = net.encode_patches(x)
        with FlopCounterMode(display=False) as fast:
            net.forward_from_codes(net.encode_patches(x), codes)
    return plain.get_total_flops() / 1e9, fast.get_total_flops() / 1e9, ref_once.get_total_flops() / 1e9


def bf16_supported(device) -> bool:
    from tools.utils import cpu_has_native_bf16

    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()


def process_timing(workdir: Path, lq_dir: Path, ref: Path, checkpoint: Path, runs: int,
                   bf16: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fast_cmd = [sys.executable, str(ROOT / "test_DistillationIQA_single.py"), "--lq", str(lq_dir),
                "--ref", str(ref), "--repeats", "1", "--studentNet_model_path", str(checkpoint), "--gpu_ids", "cpu",
                "--test_batch_size", "12"]
    plain_cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-process", "--lq", str(lq_dir),
                 "--ref", str(ref), "--checkpoint", str(checkpoint)]
    commands = [("plain", plain_cmd), ("fast", fast_cmd)]
    if bf16:
        commands.append(("fast_bf16", [*fast_cmd, "--eval_amp", "bf16"]))
    best = {}
    for name, cmd in commands:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=workdir, env=env, capture_output=True)
            times.append(time.perf_counter() - start)
        best[name] = min(times)
    return best


def plain_process(args) -> None:
    """Whole-process baseline: build the network as the original does, load, score each image plainly."""
    lq_paths = sorted(Path(args.lq).iterdir())
    net = build_net(args.checkpoint)
    scores = plain_scores(net, lq_paths, Path(args.ref), 1, 0, torch.device("cpu"))
    for path, score in zip(lq_paths, scores):
        print(f"{path}  {score:.4f}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=2, help="whole-process runs per path (best is kept)")
    parser.add_argument("--no-process", action="store_true", help="skip the whole-process comparison")
    parser.add_argument("--plain-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lq", help=argparse.SUPPRESS)
    parser.add_argument("--ref", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    return parser


def in_process_rows(net, lq_paths, ref, args, device) -> list[tuple[str, float, np.ndarray]]:
    """(path name, seconds, scores) of the plain path (a), the fast path (b) and, where supported, (c)."""
    from tools.scorer import IQAScorer

    plain, t_plain = timed(lambda: plain_scores(net, lq_paths, ref, args.repeats, 0, device))
    rows = [("(a) plain: both branches, batch 1, fp32", t_plain, plain)]

    def fast_run(dtype):
        scorer = IQAScorer(build_net().to(device), ref, repeats=args.repeats, batch_size=args.images,
                           device=device, autocast_dtype=dtype, seed=0)
        return scorer.score(lq_paths)
    fast, t_fast = timed(lambda: fast_run(None))
    rows.append(("(b) fast: ref once, batched, inference_mode, channels-last", t_fast, fast))
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    if bf16_supported(device) or device.type == "cuda":
        low_scores, t_low = timed(lambda: fast_run(low))
        rows.append((f"(c) fast + {str(low).split('.')[-1]} autocast", t_low, low_scores))
        if device.type == "cuda":
            bf, t_bf = timed(lambda: fast_run(torch.bfloat16))
            rows.append(("(c') fast + bfloat16 autocast", t_bf, bf))
    else:
        print("bf16: this CPU has no native bf16 support; (c) skipped")
    return rows


def print_rows(rows, args, flops: tuple[float, float, float]) -> None:
    from scipy import stats

    plain_flops, fast_flops, ref_flops = flops
    (_, t_plain, plain), (_, t_fast, _) = rows[0], rows[1]
    n = args.images * args.repeats
    print(f"\n{args.images} images 512x384, reference 2040x1356, repeats {args.repeats}, patch {PATCH} x {PATCHES}")
    print(f"{'path':<62} {'images/s':>9} {'vs (a)':>7} {'max |Δscore| vs (a)':>20} {'SRCC vs (a)':>12}")
    for name, seconds, scores in rows:
        diff = np.max(np.abs(scores - plain))
        srcc = stats.spearmanr(scores, plain)[0] if len(scores) > 1 else float("nan")
        print(f"{name:<62} {n / seconds:>9.2f} {t_plain / seconds:>6.2f}x {diff:>20.2e} {srcc:>12.4f}")
    per_image_fast = fast_flops + ref_flops / args.images
    print(f"\nFLOPs per image: plain {plain_flops:.1f} GFLOP (both branches); fast {fast_flops:.1f} GFLOP "
          f"+ reference {ref_flops:.1f} GFLOP once ({per_image_fast:.1f} GFLOP/image over {args.images} images)")
    print(f"achieved: plain {plain_flops * n / t_plain:.0f} GFLOP/s, "
          f"fast {per_image_fast * n / t_fast:.0f} GFLOP/s")


def print_process_timing(tmp: Path, net, ref, args, flops: tuple[float, float, float]) -> None:
    plain_flops, fast_flops, ref_flops = flops
    checkpoint = tmp / "student.pth"
    torch.save(net.state_dict(), checkpoint)
    times = process_timing(tmp, tmp / "lq", ref, checkpoint, args.runs, bf16_supported(torch.device("cpu")))
    print(f"\nwhole process, {args.images} images, --repeats 1 (best of {args.runs}):")
    print(f"  plain-path script, fp32                  {times['plain']:6.2f} s")
    print(f"  test_DistillationIQA_single, fp32        {times['fast']:6.2f} s   "
          f"speed-up {times['plain'] / times['fast']:.2f}x")
    if "fast_bf16" in times:
        print(f"  test_DistillationIQA_single --eval_amp bf16 {times['fast_bf16']:6.2f} s   "
              f"speed-up {times['plain'] / times['fast_bf16']:.2f}x")
    bound = (plain_flops * args.images) / (fast_flops * args.images + ref_flops)
    print(f"  FLOP ratio plain / fast for {args.images} images: {bound:.2f}x "
          "(the bound for fp32 at equal efficiency, before the shared start-up)")


def main() -> None:
    args = get_args_parser().parse_args()
    if args.plain_process:
        plain_process(args)
        return
    device = torch.device(args.device)
    kind = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name()
    print(f"device: {device} ({kind}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lq_paths, ref = make_inputs(tmp, args.images)
        net = build_net().to(device)
        flops = count_flops(net, device)
        print_rows(in_process_rows(net, lq_paths, ref, args, device), args, flops)
        if not args.no_process and device.type == "cpu":
            print_process_timing(tmp, net, ref, args, flops)


if __name__ == "__main__":
    main()
