"""Building the network for a script: fresh, from a checkpoint of the right role, or as the frozen FR-teacher;
and what a checkpoint says about its training set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from common.errors import UserError
from common.files import safe_torch_load
from dataloaders import DATASET_NAMES, dataset_class
from models.DistillationIQA import DistillationIQANet
from tools import checkpoint as ckpt


def set_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """`module` with its 4-D weights in channels-last (NHWC) or contiguous (NCHW) memory; the network's patch
    encoder follows the backbone's format with its inputs. Channels-last is what cuDNN's fastest fp16/bf16
    convolutions (tensor cores) read; results are the same up to the summation order."""
    return module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def prefers_channels_last(device: torch.device) -> bool:
    """Whether networks on `device` run channels-last: on CUDA, yes; on the CPU they keep the contiguous format
    (the CPU results stay those of the contiguous network)."""
    return device.type == "cuda"


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(module)` with `enabled` (--compile), else `module` itself."""
    return torch.compile(module) if enabled else module


def build_network(device: torch.device, *, self_patch_num: int, distillation_layer: int,
                  pretrained: bool | str | os.PathLike = False, backbone_bn_eval: bool = False,
                  weights: str | os.PathLike | None = None, role: str | None = None,
                  option: str = "checkpoint") -> DistillationIQANet:
    """A `DistillationIQANet` of these sizes on `device`; from `weights` (a checkpoint) when given.

    With a checkpoint the backbone is not fetched separately (`pretrained` is ignored: the checkpoint holds it).
    With `role` ('teacher' or 'student'), a checkpoint of this project recorded as the other role is refused,
    naming `option`. On CUDA the network is channels-last.
    """
    sizes = {"self_patch_num": self_patch_num, "distillation_layer": distillation_layer,
             "backbone_bn_eval": backbone_bn_eval}
    if weights:
        loaded = ckpt.load_model_checkpoint(weights, option, role) if role else weights
        model = DistillationIQANet.from_checkpoint(loaded, name=f"{option} {weights}", **sizes)
    else:
        model = DistillationIQANet(pretrained=pretrained, **sizes)
    return set_memory_format(model.to(device), prefers_channels_last(device))


def load_frozen_teacher(path: str | os.PathLike | None, device: torch.device, *, self_patch_num: int,
                        distillation_layer: int) -> DistillationIQANet:
    """The FR-teacher from `path` (--teacherNet_model_path): eval mode, no gradients."""
    if not path:
        raise UserError("--teacherNet_model_path is required to train the student (the FR-teacher's weights)")
    if not Path(path).is_file():
        raise UserError(f"--teacherNet_model_path: teacher checkpoint not found: {path} "
                        "(train one with train_DistillationIQA_FR.py or put the released file there)")
    teacher = build_network(device, self_patch_num=self_patch_num, distillation_layer=distillation_layer,
                            weights=path, role="teacher", option="--teacherNet_model_path")
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad = False
    return teacher


def training_set_of(path: str | os.PathLike, default: str) -> tuple[str, str]:
    """(training set, where that was read) of a checkpoint: its stored options (this project's files), else
    `default` (--train_dataset; the authors' released files were trained on kadid10k)."""
    return training_set_in(safe_torch_load(path), default, "--train_dataset")


def training_set_in(checkpoint: object, default: str, option: str = "train_dataset") -> tuple[str, str]:
    """(training set, where that was read) of an already loaded checkpoint; `default` (given as `option`) when
    it stores no options."""
    stored = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    if isinstance(stored, Mapping) and stored.get("train_dataset") in DATASET_NAMES:
        return stored["train_dataset"], "the checkpoint's options"
    return default, f"{option} (the checkpoint stores no options)"


def check_student_training_set(train_dataset: str) -> None:
    """The student's KD needs the teacher's view of each training image with its pixel-aligned reference:
    an authentic training set (no aligned references) is refused at start."""
    if not dataset_class(train_dataset).has_aligned_reference:
        usable = ", ".join(n for n in DATASET_NAMES if dataset_class(n).has_aligned_reference)
        raise UserError(f"--train_dataset {train_dataset}: the NAR-student cannot be trained on an authentic "
                        "dataset: the teacher's knowledge distillation needs pixel-aligned HQ references, which it "
                        f"lacks (train on one of {usable}; {train_dataset} can serve as a test set)")
