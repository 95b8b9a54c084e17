"""Score images with a NAR-student against non-aligned HQ references — the importable scoring API.

    scorer = IQAScorer("model_zoo/NAR_student_cross_dataset.pth", references="dataset/DIV2K_ref/val_HR")
    scores = scorer.score(["a.png", "b.jpg"])        # paths, PIL images or [3, H, W] tensors in [0, 1]

The reference crops are drawn once (one reference image and `self_patch_num` crops per repeat) and the
reference branch of the network is computed once for all images; LQ images are scored in batches.

As a loss (pyiqa's convention: `as_loss=True`, tensors in [0, 1], `lower_better`):

    scorer = IQAScorer(checkpoint, references, as_loss=True, repeats=1)
    scores = scorer(restored)                          # [N], differentiable w.r.t. `restored` [N, 3, H, W]
    loss = scores.mean() if scorer.lower_better else -scores.mean()
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.nn.utils.fusion import fuse_conv_bn_eval

from common.errors import UserError
from common.files import list_folder
from dataloaders import DATASET_NAMES, dataset_class, list_reference_images, load_rgb
from dataloaders.image_io import IMAGE_EXTENSIONS, is_image_file
from dataloaders.sampling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_origins,
    fit_patch_size,
    fitted_size,
    independent_patches,
    to_model_input,
    to_uint8_tensor,
)
from models.DistillationIQA import DistillationIQANet
from tools.checkpoint import load_model_checkpoint
from tools.networks import set_memory_format, training_set_in

ImageInput = str | os.PathLike | Image.Image | torch.Tensor
# Where a student checkpoint comes from (said when none is found). The demo's student is tools/demo.py's
# `<out>/student/models/last.pth` with its default --out; it was trained with 2 patches (--self_patch_num 2).
STUDENT_CHECKPOINT_SOURCES = (
    "get one: the authors' NAR_student_cross_dataset.pth in model_zoo/ (model_zoo/README.md), a trained "
    "checkpoint_DistillationIQA/models/best.pth, or the demo's demo_output/student/models/last.pth "
    "(make demo; score with --self_patch_num 2)"
)


def check_student_checkpoint(path: str | os.PathLike) -> None:
    """One line naming the missing student checkpoint and where one comes from."""
    if not Path(path).is_file():
        raise UserError(f"student checkpoint not found: {path}; {STUDENT_CHECKPOINT_SOURCES}")


def expand_image_paths(items: Sequence[str | os.PathLike], what: str) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); a clear error for anything missing."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = [p for p in list_folder(path, what) if is_image_file(p)]
            if not found:
                raise UserError(f"{what}: folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"{what}: no such file or folder: {path}")
    if not paths:
        raise UserError(f"{what}: no images given")
    return paths


def fold_batchnorm(backbone: nn.Module) -> None:
    """Fold each eval-mode BatchNorm of the ResNet into the convolution before it (inference only)."""
    pairs = [(backbone, "conv1", "bn1")]
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in layer:
            pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2"), (block, "conv3", "bn3")]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    for parent, conv, bn in pairs:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, nn.Identity())


def _as_array(image: ImageInput, patch_size: int, upscale: bool, name: str) -> np.ndarray:
    """Any accepted image input -> uint8 H x W x 3 array at least patch_size on each side."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
            raise UserError(f"{name}: expected a [3, H, W] tensor with values in [0, 1], got {list(image.shape)}")
        t = t[:3] if t.shape[0] != 1 else t.expand(3, -1, -1)
        pil = Image.fromarray((t.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    elif isinstance(image, Image.Image):
        pil = image if image.mode == "RGB" else image.convert("RGB")
    else:
        pil = load_rgb(image)
    return np.asarray(fit_patch_size(pil, patch_size, upscale, name))


def lower_is_better(train_dataset: str) -> bool:
    """Whether a student trained on `train_dataset` gives lower scores to better images (its labels' direction)."""
    if train_dataset not in DATASET_NAMES:
        raise UserError(f"train_dataset {train_dataset!r}: expected one of {', '.join(DATASET_NAMES)}")
    return not dataset_class(train_dataset).higher_is_better


class IQAScorer:
    """NAR-student scoring of images against non-aligned reference images.

    `as_loss=True`: `scorer(x)` gives scores differentiable w.r.t. `x` (see `differentiable_score`), with fresh
    random LQ crops per call from a generator seeded by `crop_seed` (default: from `seed`). `lower_better` follows
    the label direction of the checkpoint's training set (its stored options, else `train_dataset`; the authors'
    released students were trained on kadid10k, where higher is better).
    """

    def __init__(self, checkpoint: str | os.PathLike | DistillationIQANet,
                 references: ImageInput | Sequence[ImageInput], *, self_patch_num: int = 10,
                 patch_size: int = 224, repeats: int = 10, seed: int = 0, batch_size: int = 8,
                 device: str | torch.device = "cpu", upscale: bool = False,
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = True,
                 as_loss: bool = False, crop_seed: int | None = None, train_dataset: str = "kadid10k") -> None:
        if repeats < 1 or batch_size < 1:
            raise UserError(f"repeats and batch_size must be at least 1 (got {repeats}, {batch_size})")
        self.device = torch.device(device)
        self.patch_size, self.repeats, self.seed = patch_size, repeats, seed
        self.batch_size, self.upscale, self.autocast_dtype = batch_size, upscale, autocast_dtype
        self.as_loss = as_loss
        # loss mode: fresh crops per call, reproducible (a stream of its own, apart from the inference crops')
        self._loss_rng = np.random.default_rng([seed, 2] if crop_seed is None else crop_seed)
        if isinstance(checkpoint, DistillationIQANet):
            net = copy.deepcopy(checkpoint)  # the caller's network stays as it is
        else:
            check_student_checkpoint(checkpoint)
            loaded = load_model_checkpoint(checkpoint, "student checkpoint", "student")
            train_dataset = training_set_in(loaded, train_dataset)[0]
            net = DistillationIQANet.from_checkpoint(loaded, name=str(checkpoint), self_patch_num=self_patch_num)
        self.train_dataset, self.lower_better = train_dataset, lower_is_better(train_dataset)
        net.eval()
        fold_batchnorm(net.feature_extractor)
        net.eval().requires_grad_(False)  # frozen (the folded layers are new modules): a loss leaves it untouched
        self.net = set_memory_format(net.to(self.device), channels_last)
        self.self_patch_num = self.net.self_patch_num
        self.reference_names, self.reference_patches = self._reference_crops(references)
        self._ref_codes = [self._encode(patches) for patches in self.reference_patches]

    # Reference crops: repeat r draws one reference and its crops from Generator([seed, 0, r]).
    def _reference_crops(self, references) -> tuple[list[str], list[torch.Tensor]]:
        """For each repeat: the reference image used and its `[1, p, 3, s, s]` uint8 crops."""
        if isinstance(references, (str, os.PathLike)):
            references = list_reference_images(references) if Path(references).is_dir() else [references]
        elif isinstance(references, (Image.Image, torch.Tensor)):
            references = [references]
        references = list(references)
        if not references:
            raise UserError("no reference images given")
        names = [str(r) if isinstance(r, (str, os.PathLike)) else f"reference #{i}" for i, r in enumerate(references)]
        arrays: dict[int, np.ndarray] = {}
        crops, used = [], []
        for r in range(self.repeats):
            rng = np.random.default_rng([self.seed, 0, r])
            k = int(rng.integers(len(references)))
            if k not in arrays:
                arrays[k] = _as_array(references[k], self.patch_size, self.upscale, names[k])
            used.append(names[k])
            patches = independent_patches(arrays[k], rng, self.patch_size, self.self_patch_num)
            crops.append(to_uint8_tensor(patches).unsqueeze(0))
        return used, crops

    def _encode(self, patches: torch.Tensor) -> list[torch.Tensor]:
        # loss mode: no_grad, as inference-mode tensors may not enter an autograd graph
        with torch.no_grad() if self.as_loss else torch.inference_mode():
            patches = to_model_input(patches, self.device)
            with self._autocast():
                return self.net.encode_patches(patches)

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def lq_patches(self, image: np.ndarray, repeat: int) -> torch.Tensor:
        """The `[p, 3, s, s]` uint8 LQ crops of one image for one repeat (Generator([seed, 1, repeat]))."""
        rng = np.random.default_rng([self.seed, 1, repeat])
        return to_uint8_tensor(independent_patches(image, rng, self.patch_size, self.self_patch_num))

    def score(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        """One score per image: the mean of the network's output over `repeats` crop sets.

        Raises `UserError` at the first image that cannot be read or gets no finite score.
        """
        return self._score(images, tolerant=False)[0]

    def try_score(self, images: ImageInput | Iterable[ImageInput]) -> tuple[np.ndarray, dict[int, str]]:
        """Like `score`, but an image that cannot be read (or gets no finite score) does not stop the others.

        Returns the scores (NaN for those images) and, by position, why each of those images has none.
        """
        return self._score(images, tolerant=True)

    @torch.inference_mode()
    def _score(self, images: ImageInput | Iterable[ImageInput], tolerant: bool) -> tuple[np.ndarray, dict[int, str]]:
        if isinstance(images, (str, os.PathLike, Image.Image)) or (
                isinstance(images, torch.Tensor) and images.dim() <= 3):
            images = [images]
        if isinstance(images, torch.Tensor):
            images = list(images)
        items = list(images)
        names = [str(img) if isinstance(img, (str, os.PathLike)) else f"image #{i}" for i, img in enumerate(items)]
        scores = np.full(len(items), np.nan)
        failures: dict[int, str] = {}
        for start in range(0, len(items), self.batch_size):
            arrays, positions = [], []
            for i in range(start, min(start + self.batch_size, len(items))):
                try:
                    arrays.append(_as_array(items[i], self.patch_size, self.upscale, names[i]))
                    positions.append(i)
                except UserError as err:
                    if not tolerant:
                        raise
                    failures[i] = str(err)
            if not arrays:
                continue
            total = torch.zeros(len(arrays), dtype=torch.float64)
            for r, ref_codes in enumerate(self._ref_codes):
                lq = to_model_input(torch.stack([self.lq_patches(a, r) for a in arrays]), self.device)
                with self._autocast():
                    lq_codes = self.net.encode_patches(lq)
                    _, _, pred = self.net.forward_from_codes(lq_codes, ref_codes)
                total += pred.float().cpu().double()
            scores[positions] = (total / self.repeats).numpy()
            for i in positions:
                if not np.isfinite(scores[i]):
                    message = f"{names[i]}: the network gave no finite score ({scores[i]})"
                    if not tolerant:
                        raise UserError(message)
                    failures[i] = message
        return scores, failures

    # ---- the differentiable path (as_loss) -----------------------------------------------------------
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """pyiqa-style call: with `as_loss`, `differentiable_score(images)`; otherwise `score(images)` as a
        float32 tensor (no gradient)."""
        if self.as_loss:
            return self.differentiable_score(images)
        return torch.from_numpy(self.score(images)).float()

    def differentiable_score(self, x: torch.Tensor,
                             origins: Sequence[Sequence[Sequence[tuple[int, int]]]] | None = None) -> torch.Tensor:
        """[N] float32 scores of `x` (float [N, 3, H, W] in [0, 1] on the scorer's device), differentiable w.r.t. `x`.

        The mean over `repeats` of the network's output, each repeat against its reference crops. The LQ crops are
        at `origins` ([repeat][image] -> `self_patch_num` (top, left)) when given, else at fresh random origins
        from the `crop_seed` generator: fixed crops would let a restoration network raise the score at those few
        places only. Runs under the caller's autocast when the scorer has no `autocast_dtype` of its own.
        """
        x = self._loss_input(x)
        if origins is None:
            origins = [[crop_origins(self._loss_rng, x.shape[2:], self.patch_size, self.self_patch_num)
                        for _ in range(len(x))] for _ in range(self.repeats)]
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        s, total = self.patch_size, None
        for ref_codes, per_image in zip(self._ref_codes, origins, strict=True):
            lq = torch.stack([torch.stack([x[i, :, top:top + s, left:left + s] for top, left in image_origins])
                              for i, image_origins in enumerate(per_image)])
            with self._autocast() if self.autocast_dtype is not None else contextlib.nullcontext():
                pred = self.net.forward_from_codes(self.net.encode_patches(lq), ref_codes)[2].float()
            total = pred if total is None else total + pred
        return total / self.repeats

    def _loss_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check a loss-mode batch; upscale it (bicubic, differentiable) when it is smaller than the patch size
        and `upscale` was asked for."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            what = f"{list(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise UserError(f"as_loss: expected a float [N, 3, H, W] tensor with values in [0, 1], got {what}")
        if x.device != self.device and not (x.device.type == self.device.type == "cuda" and self.device.index is None):
            raise UserError(f"as_loss: the images are on {x.device}, the scorer on {self.device}")
        h, w = x.shape[2:]
        fitted_w, fitted_h = fitted_size((w, h), self.patch_size, self.upscale, f"batch {list(x.shape)}")
        if (fitted_w, fitted_h) != (w, h):
            x = F.interpolate(x, size=(fitted_h, fitted_w), mode="bicubic", align_corners=False)
        return x
