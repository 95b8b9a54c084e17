"""Patch sampling: paired (pixel-aligned) crops, independent crops, flips, rotation, normalisation.

All randomness comes from the `numpy.random.Generator` passed in, so a sample is a pure function of
its generator's seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
# (x / 255 - mean) / std as one multiply and one add per value, both rounded to float32
_SCALE = torch.from_numpy((1.0 / (255.0 * np.array(IMAGENET_STD))).astype(np.float32)).view(3, 1, 1)
_BIAS = torch.from_numpy((-np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)).astype(np.float32)).view(3, 1, 1)
_CONSTANTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


MAX_UPSCALE_ASPECT = 32  # an image that must be upscaled may be at most this elongated (bounds the memory)


def fitted_size(size: tuple[int, int], patch_size: int, upscale: bool, path: Path | str) -> tuple[int, int]:
    """The (w, h) that fit_patch_size gives an image of `size` (w, h); UserError if too small and not `upscale`,
    or too elongated to upscale."""
    w, h = size
    if w >= patch_size and h >= patch_size:
        return size
    if not upscale:
        raise UserError(f"image {path} is {w}x{h}, smaller than the patch size {patch_size}; "
                        "use a smaller --patch_size or ask for upscaling (--upscale_small_images; "
                        "upscale=True in Python)")
    if max(w, h) > MAX_UPSCALE_ASPECT * min(w, h):
        raise UserError(f"image {path} is {w}x{h}, smaller than the patch size {patch_size} and too elongated "
                        f"to upscale (more than {MAX_UPSCALE_ASPECT}:1)")
    scale = max(patch_size / w, patch_size / h)
    return max(patch_size, math.ceil(w * scale)), max(patch_size, math.ceil(h * scale))


def fit_patch_size(img: Image.Image, patch_size: int, upscale: bool, path: Path | str) -> Image.Image:
    """Return `img` unchanged if both sides are >= patch_size; upscale it (bicubic, aspect kept) if asked.

    Otherwise raise UserError naming the file, its size and the patch size. An image more elongated than
    MAX_UPSCALE_ASPECT:1 is never upscaled (a 1x20000 strip would become gigabytes).
    """
    size = fitted_size(img.size, patch_size, upscale, path)
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def _crop_origin(rng: np.random.Generator, shape: tuple[int, ...], s: int) -> tuple[int, int]:
    """Random (top, left) of an s x s crop inside an array of shape (H, W, ...)."""
    return int(rng.integers(0, shape[0] - s + 1)), int(rng.integers(0, shape[1] - s + 1))


def crop_origins(rng: np.random.Generator, shape: tuple[int, ...], patch_size: int,
                 count: int) -> list[tuple[int, int]]:
    """`count` random (top, left) of patch_size crops inside an array of shape (H, W, ...).

    The same draws as `independent_patches` without flip or rotation, so a generator in the same state gives the
    same crops (the differentiable scorer crops tensors at these origins).
    """
    return [_crop_origin(rng, shape, patch_size) for _ in range(count)]


def paired_patches(lq: np.ndarray, hq: np.ndarray, rng: np.random.Generator, patch_size: int,
                   patch_num: int, augment: bool) -> tuple[np.ndarray, np.ndarray]:
    """`patch_num` crops at the same position in LQ and HQ (arrays H x W x 3, same shape).

    With `augment`, each pair also gets (p=0.5 each) a vertical flip, a horizontal flip and a
    180-degree rotation, applied identically to LQ and HQ. Returns two uint8 arrays [p, s, s, 3].
    """
    s = patch_size
    lq_out = np.empty((patch_num, s, s, 3), np.uint8)
    hq_out = np.empty_like(lq_out)
    for i in range(patch_num):
        top, left = _crop_origin(rng, lq.shape, s)
        a, b = lq[top:top + s, left:left + s], hq[top:top + s, left:left + s]
        if augment:
            vflip, hflip, rot180 = rng.random(3) < 0.5
            if vflip:
                a, b = a[::-1], b[::-1]
            if hflip:
                a, b = a[:, ::-1], b[:, ::-1]
            if rot180:
                a, b = a[::-1, ::-1], b[::-1, ::-1]
        lq_out[i], hq_out[i] = a, b
    return lq_out, hq_out


def independent_patches(img: np.ndarray, rng: np.random.Generator, patch_size: int, patch_num: int,
                        flip: bool = False, rotate: bool = False) -> np.ndarray:
    """`patch_num` crops at independent random positions of one image (H x W x 3).

    `flip`: random horizontal and vertical flip (p=0.5 each); `rotate`: then a random rotation in
    [-180, 180] degrees about the patch centre (nearest neighbour, corners filled with black).
    Returns a uint8 array [p, s, s, 3].
    """
    s = patch_size
    out = np.empty((patch_num, s, s, 3), np.uint8)
    for i in range(patch_num):
        top, left = _crop_origin(rng, img.shape, s)
        patch = img[top:top + s, left:left + s]
        if flip:
            hflip, vflip = rng.random(2) < 0.5
            if hflip:
                patch = patch[:, ::-1]
            if vflip:
                patch = patch[::-1]
        if rotate:
            angle = float(rng.uniform(-180.0, 180.0))
            patch = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).rotate(
                angle, resample=Image.Resampling.NEAREST))
        out[i] = patch
    return out


def to_uint8_tensor(patches: np.ndarray) -> torch.Tensor:
    """uint8 [p, s, s, 3] -> uint8 tensor [p, 3, s, s]: what the datasets yield (normalised on the device)."""
    return torch.from_numpy(np.ascontiguousarray(patches.transpose(0, 3, 1, 2)))


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, s, s] -> float32 scaled to [0, 1] and ImageNet-normalised, on the tensor's own device.

    One float32 multiply and one float32 add per value, so the result is the same on every device; it is
    within 1e-6 of the exact (x / 255 - mean) / std (the largest |value| is 2.64, where a float32 step is 2.4e-7).
    """
    device = patches.device
    if device not in _CONSTANTS:
        _CONSTANTS[device] = (_SCALE.to(device), _BIAS.to(device))
    scale, bias = _CONSTANTS[device]
    return patches.float().mul_(scale).add_(bias)


def to_model_input(patches: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Patches of a batch, ready for the network on `device`.

    uint8 patches travel as uint8 (4x fewer bytes; asynchronously from pinned memory on CUDA) and are
    normalised on `device`; float patches (already normalised) are only moved.
    """
    patches = patches.to(device, non_blocking=True)
    return normalize_patches(patches) if patches.dtype == torch.uint8 else patches


def to_normalized_tensor(patches: np.ndarray) -> torch.Tensor:
    """uint8 [p, s, s, 3] -> float32 [p, 3, s, s] normalised on the CPU (the float path, for comparisons)."""
    return normalize_patches(to_uint8_tensor(patches))


def denormalize(tensor: torch.Tensor) -> torch.Tensor:
    """Inverse of normalize_patches up to rounding: float [p, 3, s, s] -> values in 0..255."""
    return (tensor * _STD + _MEAN) * 255.0
