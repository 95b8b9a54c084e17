"""Sections C (numerics), E (the scorer) and F (throughput) of benchmarks/gpu_check.py, in-process."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

from dataloaders import list_reference_images
from dataloaders.ref_cache import build_reference_cache
from dataloaders.sampling import normalize_patches, to_model_input
from models.DistillationIQA import DistillationIQANet
from tools.data import build_test_sets, build_train_loader
from tools.epoch import Distillation, make_optimizer, predict, train_one_epoch
from tools.networks import maybe_compile, prefers_channels_last, set_memory_format
from tools.runtime import Run
from tools.scorer import IQAScorer
from tools.utils import (
    DistInfo,
    configure_cuda,
    default_num_workers,
    default_test_batch_size,
    resolve_precision,
    set_tf32,
)

NOT_ON_CPU = "not applicable on cpu"
SKIPPED_DRY = "skipped in the dry run"
FP16_MAX = 65504.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_INITIAL: dict[tuple, DistillationIQANet] = {}


def _net(device: torch.device, sizes, seed: int = 0) -> DistillationIQANet:
    """A fresh network (random weights from `seed`) of the check's sizes on `device`, channels-last on CUDA; built
    once per seed and copied (a ResNet-50's initialisation costs seconds on a small CPU)."""
    if seed not in _INITIAL:
        torch.manual_seed(seed)
        _INITIAL[seed] = DistillationIQANet(self_patch_num=sizes.crops, MLP_depth=sizes.mlp_depth,
                                            distillation_layer=18, pretrained=False)
    return set_memory_format(copy.deepcopy(_INITIAL[seed]).to(device), prefers_channels_last(device))


def _batch(sizes, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, sizes.crops, 3, sizes.patch, sizes.patch)
    return (torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8),
            torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))


@torch.inference_mode()
def _predict_batch(net: torch.nn.Module, lq: torch.Tensor, ref: torch.Tensor, device: torch.device,
                   dtype: torch.dtype | None) -> torch.Tensor:
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        pred = net(to_model_input(lq, device), to_model_input(ref, device))[2]
    return pred.float().cpu()


# ---- C. numerics ---------------------------------------------------------------------------------------------
def section_c(section, sizes, device: torch.device, dry: bool) -> None:
    cpu = torch.device("cpu")
    n = 2 if dry else 4
    lq, ref = _batch(sizes, n)
    net = _net(cpu, sizes).eval()
    reference = _predict_batch(net, lq, ref, cpu, None)

    def diff(pred: torch.Tensor) -> float:
        return float((pred.double() - reference.double()).abs().max())

    section.measure("cpu_bf16_vs_cpu_fp32_max_abs_diff", lambda: diff(_predict_batch(net, lq, ref, cpu,
                                                                                      torch.bfloat16)))
    if device.type != "cuda":
        for key in ("cuda_fp32_vs_cpu_max_abs_diff", "cuda_tf32_vs_cpu_max_abs_diff", "cuda_fp16_vs_cpu_max_abs_diff",
                    "cuda_bf16_vs_cpu_max_abs_diff", "fp16_steps_loss_finite", "fp16_steps_scaler_skipped"):
            section.values[key] = NOT_ON_CPU
    else:
        gpu_net = set_memory_format(copy.deepcopy(net).to(device), True)

        def tf32_diff() -> float:
            set_tf32(True)
            try:
                return diff(_predict_batch(gpu_net, lq, ref, device, None))
            finally:
                set_tf32(False)

        section.measure("cuda_fp32_vs_cpu_max_abs_diff", lambda: diff(_predict_batch(gpu_net, lq, ref, device, None)))
        section.measure("cuda_tf32_vs_cpu_max_abs_diff", tf32_diff)
        section.measure("cuda_fp16_vs_cpu_max_abs_diff",
                        lambda: diff(_predict_batch(gpu_net, lq, ref, device, torch.float16)))
        section.measure("cuda_bf16_vs_cpu_max_abs_diff",
                        lambda: diff(_predict_batch(gpu_net, lq, ref, device, torch.bfloat16)))
        section.measure("", lambda: _fp16_steps(gpu_net, lq, ref, device, sizes.fp16_steps))
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    section.measure("", lambda: _largest_activation(net if device.type != "cuda" else gpu_net, lq, ref, device, low))


def _largest_activation(net: torch.nn.Module, lq, ref, device: torch.device, dtype: torch.dtype) -> dict:
    """The module whose output holds the largest |value| under autocast, and that value (fp16 overflows at 65504)."""
    largest: dict[str, float] = {}

    def hook(name):
        def record(module, inputs, output):
            tensors = [t for t in (output if isinstance(output, (list, tuple)) else [output])
                       if isinstance(t, torch.Tensor) and t.is_floating_point()]
            if tensors:
                largest[name] = max(largest.get(name, 0.0), max(float(t.abs().max()) for t in tensors))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in net.named_modules() if name]
    try:
        _predict_batch(net, lq, ref, device, dtype)
    finally:
        for handle in handles:
            handle.remove()
    name = max(largest, key=largest.get)
    return {"largest_activation_dtype": str(dtype).replace("torch.", ""), "largest_activation_module": name,
            "largest_activation": largest[name], "largest_activation_share_of_fp16_max": largest[name] / FP16_MAX}


def _fp16_steps(net: torch.nn.Module, lq, ref, device: torch.device, steps: int) -> dict:
    model = copy.deepcopy(net).train()
    optimizer = make_optimizer(model, 2e-5, 10, 5e-4)
    scaler = torch.amp.GradScaler("cuda")
    label = torch.linspace(0, 1, lq.shape[0], device=device)
    x, r = to_model_input(lq, device), to_model_input(ref, device)
    losses, skipped = [], 0
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.l1_loss(model(x, r)[2].float(), label)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped += scaler.get_scale() < before  # the scale drops when a step was skipped (inf/NaN gradients)
        losses.append(loss.detach())
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    return {"fp16_steps_loss_finite": finite, "fp16_steps_scaler_skipped": int(skipped)}


# ---- E. the scorer ------------------------------------------------------------------------------------------------
def section_e(section, data: Path, sizes, device: torch.device) -> None:
    images = sorted((data / "kadid10k" / "images").glob("I*_*_*.png"))
    refs = list_reference_images(data / "DIV2K_ref" / "val_HR")
    net = _net(torch.device("cpu"), sizes)
    repeats = 1 if sizes.crops == 1 else 2

    def score(where: torch.device, dtype: torch.dtype | None) -> tuple[np.ndarray, float]:
        scorer = IQAScorer(net, refs, patch_size=sizes.patch, repeats=repeats, device=where, autocast_dtype=dtype,
                           batch_size=default_test_batch_size("0" if where.type == "cuda" else "cpu"))
        scorer.score(images[:1])  # warm-up
        _sync(where)
        start = time.perf_counter()
        scores = scorer.score(images)
        _sync(where)
        return scores, len(images) / (time.perf_counter() - start)

    cpu_scores, cpu_rate = score(torch.device("cpu"), None)
    section.values["cpu_fp32_images_per_s"] = cpu_rate
    for name, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        if device.type != "cuda":
            section.values[f"cuda_{name}_max_abs_diff_vs_cpu"] = NOT_ON_CPU
            section.values[f"cuda_{name}_images_per_s"] = NOT_ON_CPU
            continue

        def measure(dtype=dtype) -> dict:
            scores, rate = score(device, dtype)
            return {"max_abs_diff_vs_cpu": float(np.abs(scores - cpu_scores).max()), "images_per_s": rate}
        section.measure(f"cuda_{name}", measure)
    section.values["images"] = len(images)


# ---- F. throughput --------------------------------------------------------------------------------------------
class FloatBatches:
    """The original's input path: patches normalised to float32 on the CPU, then moved (4x the bytes of uint8)."""

    def __init__(self, loader) -> None:
        self.loader, self.sampler, self.dataset = loader, loader.sampler, loader.dataset
        self.batch_sampler = loader.batch_sampler  # where build_loader's epoch lives

    def __iter__(self):
        for batch in self.loader:
            yield {k: normalize_patches(v) if isinstance(v, torch.Tensor) and v.dtype == torch.uint8 else v
                   for k, v in batch.items()}

    def __len__(self) -> int:
        return len(self.loader)


def _backbone_crops_per_s(net: DistillationIQANet, crops: int, sizes, run: Run, repeats: int) -> float:
    """The bare ResNet-50's inference throughput over `crops` crops at a time, in the run's precision."""
    backbone = net.feature_extractor
    x = to_model_input(torch.randint(0, 256, (crops, 3, sizes.patch, sizes.patch), dtype=torch.uint8), run.device)
    x = x.contiguous(memory_format=torch.channels_last) if run.device.type == "cuda" else x
    with torch.inference_mode(), run.precision.autocast():
        backbone(x)  # warm-up (cuDNN autotuning)
        _sync(run.device)
        start = time.perf_counter()
        for _ in range(repeats):
            backbone(x)
        _sync(run.device)
    return crops * repeats / (time.perf_counter() - start)


def _train_rate(model, loader, run: Run, kd: Distillation | None, warm: bool) -> dict:
    optimizer = make_optimizer(model, 2e-5, 10, 5e-4)
    scaler = run.precision.scaler()
    if warm:
        train_one_epoch(model, loader, optimizer, scaler, run, 0, kd=kd)
    stats = train_one_epoch(model, loader, optimizer, scaler, run, 1, kd=kd)
    return {"samples_per_s": stats["samples_per_s"], "data_share": stats["data_share"]}


def section_f(section, data: Path, sizes, device: torch.device, dry: bool) -> None:
    cuda, warm = device.type == "cuda", not dry
    configure_cuda(deterministic=False)
    run = Run(DistInfo(), device, resolve_precision("auto", device))
    workers = 0 if dry else default_num_workers()
    section.values["workers"] = workers if not dry else "0 (dry run; the default here would be " \
                                                        f"{default_num_workers()})"
    repeats = math.ceil(sizes.steps * sizes.batch / (sizes.contents * 4))
    ref_cache = build_reference_cache(None, workers)

    def loader(mode: str, n_workers: int = workers, cache=ref_cache):
        return build_train_loader("kadid10k", mode, dataset_paths={"kadid10k": data / "kadid10k"},
                                  patch_size=sizes.patch, patch_num=sizes.crops, seed=0, batch_size=sizes.batch,
                                  repeats=repeats, num_workers=n_workers, ref_folder=data / "DIV2K_ref" / "train_HR",
                                  ref_cache=cache)

    teacher = _net(device, sizes)
    step_crops = {"teacher": 2 * sizes.crops, "student": 4 * sizes.crops}  # per sample, the frozen teacher's too
    backbone = section.measure("backbone_crops_per_s", lambda: _backbone_crops_per_s(
        teacher, sizes.batch * step_crops["teacher"], sizes, run, repeats=1 if dry else 5))
    peak = {}

    def role_rate(role: str, n_workers: int = workers) -> dict:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        model, kd = teacher, None
        if role == "student":
            frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
            model, kd = _net(device, sizes), Distillation(frozen)
        rate = _train_rate(model, loader("lq_hq" if role == "teacher" else "lq_hq_ref", n_workers), run, kd, warm)
        crops_per_s = rate["samples_per_s"] * step_crops[role]
        peak[role] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else NOT_ON_CPU
        return {"steps_per_s": rate["samples_per_s"] / sizes.batch, "crops_per_s": crops_per_s,
                "share_of_backbone": crops_per_s / backbone if isinstance(backbone, float) else "no backbone figure",
                "data_share": rate["data_share"]}

    for role in ("teacher", "student"):
        section.measure(role, lambda role=role: role_rate(role))
        section.values[f"{role}_peak_gpu_memory_gib"] = peak.get(role, NOT_ON_CPU)
        if dry:
            section.values[f"{role}_data_share_more_workers"] = SKIPPED_DRY
        else:
            section.measure(f"{role}_data_share_more_workers",
                            lambda role=role: role_rate(role, min(2 * max(workers, 1), 32))["data_share"])
    section.measure("", lambda: _evaluation(teacher, data, sizes, run, backbone, workers, ref_cache))
    section.measure("", lambda: _original_procedure(teacher, data, sizes, loader, section.values, warm, workers))
    # --compile last: compiling takes a minute or more, so only with that much of the time box left
    if dry:
        section.values["teacher_compiled"] = SKIPPED_DRY
    elif section.left() < COMPILE_SECONDS:
        section.values["teacher_compiled"] = f"skipped: under {COMPILE_SECONDS} s of the time box left"
    else:
        section.measure("teacher_compiled", lambda: _compiled_rate(teacher, loader("lq_hq"), run, sizes,
                                                                   section.values.get("teacher.steps_per_s")))


COMPILE_SECONDS = 120


def _compiled_rate(teacher, loader, run: Run, sizes, eager_steps_per_s) -> dict:
    """Teacher steps/s with --compile (torch.compile; the warm-up epoch compiles), and its speed-up over eager."""
    model = maybe_compile(copy.deepcopy(teacher), True)
    start = time.perf_counter()
    rate = _train_rate(model, loader, run, None, warm=True)
    steps = rate["samples_per_s"] / sizes.batch
    speedup = steps / eager_steps_per_s if isinstance(eager_steps_per_s, float) else "no eager figure"
    return {"steps_per_s": steps, "speedup_over_eager": speedup,
            "seconds_with_compilation": round(time.perf_counter() - start, 1)}


def _eval_rate(net, data: Path, sizes, run: Run, batch_size: int, workers: int, float_batches: bool = False,
               cache=None) -> float:
    test_set = build_test_sets(["kadid10k"], "lq_hq_ref", dataset_paths={"kadid10k": data / "kadid10k"},
                               patch_size=sizes.patch, patch_num=sizes.crops, seed=0, batch_size=batch_size,
                               num_workers=workers, ref_folder=data / "DIV2K_ref" / "val_HR", ref_cache=cache)[0]
    loader = FloatBatches(test_set.loader) if float_batches else test_set.loader
    _sync(run.device)
    start = time.perf_counter()
    predict(net, loader, run, 0, "ref")
    _sync(run.device)
    return len(test_set.loader.dataset) / (time.perf_counter() - start)


def _evaluation(net, data: Path, sizes, run: Run, backbone, workers: int, cache) -> dict:
    default = default_test_batch_size("0" if run.device.type == "cuda" else "cpu")
    per_image = 2 * sizes.crops  # LQ and reference crops
    rate8 = _eval_rate(net, data, sizes, run, 8, workers, cache=cache)
    rate = _eval_rate(net, data, sizes, run, default, workers, cache=cache)
    return {"eval_images_per_s_batch_8": rate8, "eval_default_batch": default,
            "eval_images_per_s_default_batch": rate,
            "eval_share_of_backbone": rate * per_image / backbone if isinstance(backbone, float) else "none"}


def _original_procedure(teacher, data: Path, sizes, loader, values: dict, warm: bool, workers: int) -> dict:
    """fp32, contiguous memory, per-sample decoding of the references, float32 batches built on the CPU,
    evaluation batch 1; the speed-up of ours over it."""
    device = next(teacher.parameters()).device
    fp32 = Run(DistInfo(), device, resolve_precision("off", device))
    model = set_memory_format(copy.deepcopy(teacher), False)
    rate = _train_rate(model, FloatBatches(loader("lq_hq", workers, None)), fp32, None, warm)
    steps = rate["samples_per_s"] / sizes.batch
    eval_rate = _eval_rate(model, data, sizes, fp32, 1, workers, float_batches=True)
    ours = values.get("teacher.steps_per_s")
    ours_eval = values.get("eval_images_per_s_default_batch")
    return {"original_teacher_steps_per_s": steps, "original_eval_images_per_s": eval_rate,
            "speedup_teacher_training": ours / steps if isinstance(ours, float) else "no figure",
            "speedup_evaluation": ours_eval / eval_rate if isinstance(ours_eval, float) else "no figure"}
