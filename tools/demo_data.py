"""Build a small, offline demo dataset from real photographs, laid out like KADID-10k, TID2013 and DIV2K.

The photographs are the colour sample photos that scikit-image ships *inside its package* (read straight from
``skimage/data/``; nothing is downloaded).  They make four groups:

* training content   -> ``<out>/kadid10k/``  (KADID-10k format),
* held-out content   -> ``<out>/TID2013/``   (TID2013 format),
* reference pool for training -> ``<out>/DIV2K_ref/train_HR/`` (DIV2K-style PNGs ``0001.png`` ...),
* reference pool for testing  -> ``<out>/DIV2K_ref/val_HR/``   (DIV2K-style PNGs ``0801.png`` ...).

Large photos give several *contents* (non-overlapping crops).  The held-out photos appear in no other group.
The reference pools hold many views of every other photo (training pool: the four quadrants of each; testing
pool: each whole photo and its centre), so that a student sees many different references: with a pool of two
images its prediction depends mostly on which one it drew.  The stereo twin ``motorcycle_right.png`` shows the
same scene as ``motorcycle_left.png`` and is used only in the pools.

Layout (exactly the real datasets' conventions, see ``dataset/README.md``)::

    <out>/kadid10k/images/I01.png ...                 references (PNG)
    <out>/kadid10k/images/I01_01_01.png ...           I<ref>_<KADID type id>_<level>, two digits each
    <out>/kadid10k/dmos.csv                           header "dist_img,ref_img,dmos,var", sorted by dist_img
    <out>/TID2013/reference_images/I01.BMP ...        references (24-bit BMP, upper-case name)
    <out>/TID2013/distorted_images/i01_08_1.bmp ...   i<ref>_<TID type id>_<level>, lower case
    <out>/TID2013/mos_with_names.txt                  "<mos> <name>" lines, ordered by reference, type, level
    <out>/TID2013/mos.txt, mos_std.txt                same order, MOS only / std (0: there are no raters)
    <out>/DIV2K_ref/train_HR/0001.png ...             pristine pool used while training
    <out>/DIV2K_ref/val_HR/0801.png ...               pristine pool used while testing
    <out>/demo_manifest.json                          written last; marks a complete build

Distortions (``DISTORTIONS``), ``levels`` levels each (default 5, level 1 = mildest), parameters
interpolated from the mildest to the strongest setting (geometrically for scale-like parameters).
Parameters are in pixels / 8-bit code values and are tuned for images of about 256x192.
Type ids are those of the real datasets:

================== ======== ========= =====================================================
name               KADID id TID id    strength, mildest -> strongest
================== ======== ========= =====================================================
gaussian_blur      01       08        Gaussian sigma 0.7 -> 4.0 px
white_noise        11       01        additive N(0, s^2) per RGB channel, s 5 -> 50
jpeg               10       10        PIL JPEG quality 50 -> 3
contrast_decrease  25       17        pull towards mean luminance, contrast factor 0.8 -> 0.2
pixelate           21       24 (*)    block averaging, block 2 -> 12 px
colour_saturation  07       18        blend with luminance, saturation factor 0.7 -> 0.0
quantisation       22       07        uniform per-channel quantisation, 24 -> 3 levels
================== ======== ========= =====================================================

(*) TID2013 has no pixelation; id 24 ("sparse sampling and reconstruction") is its nearest counterpart.

Label rule (``LABEL_RULE``; a deterministic stand-in for subjective scores, higher = better)::

    u = 1 - w[d] * level / levels        w = SEVERITY[d], 0.8 for every distortion (label = level only)
    KADID-10k "dmos" = round(1 + 4 * u, 2)   (scale 1-5; KADID's "dmos" column is really a MOS)
    TID2013 MOS      = round(9 * u, 5)       (scale 0-9)
    KADID "var" and TID2013 "mos_std" are 0.

Deterministic given ``seed``: each image gets its own generator, seeded by
``(seed, group, content, type, level)``.
Usage: ``python -m tools.demo_data --out demo_data [--size 256x192] [--seed 0] [--levels 5] [--overwrite]``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from common.errors import UserError, run_cli

__all__ = [
    "DISTORTIONS",
    "KADID_TYPE_IDS",
    "LABEL_RULE",
    "SEVERITY",
    "TID_TYPE_IDS",
    "build_demo_dataset",
    "kadid_score",
    "main",
    "quality_fraction",
    "tid_score",
]

MANIFEST_NAME = "demo_manifest.json"
INCOMPLETE_MARKER = ".demo_build_incomplete"
_FORMAT_TAG = "cvrkd-iqa-demo-data"
_FORMAT_VERSION = 3
_OUTPUT_ENTRIES = ("kadid10k", "TID2013", "DIV2K_ref")
MAX_LEVELS = 9  # TID2013 writes the level as one digit
POOL_SCALE = 1.25  # reference-pool images are this much larger than the distorted ones

# ----------------------------------------------------------------------------------------------------------
# Distortions
# ----------------------------------------------------------------------------------------------------------

DistortionFn = Callable[..., np.ndarray]


def _check_level(level: int, levels: int) -> None:
    if not 1 <= levels <= MAX_LEVELS:
        raise UserError(f"levels must be between 1 and {MAX_LEVELS}, got {levels}")
    if not 1 <= level <= levels:
        raise UserError(f"level must be between 1 and {levels}, got {level}")


def _position(level: int, levels: int) -> float:
    """Where `level` lies between the mildest (0) and the strongest (1) setting."""
    _check_level(level, levels)
    return 0.0 if levels == 1 else (level - 1) / (levels - 1)


def _geometric(level: int, levels: int, mild: float, strong: float) -> float:
    return mild * (strong / mild) ** _position(level, levels)


def _linear(level: int, levels: int, mild: float, strong: float) -> float:
    return mild + (strong - mild) * _position(level, levels)


def _int_schedule(level: int, levels: int, mild: int, strong: int) -> int:
    """Geometric integer schedule, forced strictly monotone so that no two levels coincide."""
    _check_level(level, levels)
    step = 1 if strong >= mild else -1
    values: list[int] = []
    for lv in range(1, levels + 1):
        v = round(_geometric(lv, levels, mild, strong))
        if values and (v - values[-1]) * step < 1:
            v = values[-1] + step
        values.append(max(v, 1))
    return values[level - 1]


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    return img.astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _luminance(x: np.ndarray) -> np.ndarray:
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def gaussian_blur(img: np.ndarray, level: int, rng: np.random.Generator, levels: int = 5) -> np.ndarray:
    """Gaussian blur, sigma 0.7 -> 4.0 px."""
    sigma = _geometric(level, levels, 0.7, 4.0)
    return _to_uint8(ndimage.gaussian_filter(_to_float(img), sigma=(sigma, sigma, 0), mode="reflect"))


def white_noise(img: np.ndarray, level: int, rng: np.random.Generator, levels: int = 5) -> np.ndarray:
    """Additive white Gaussian noise per RGB channel, std 5 -> 50 code values."""
    std = _geometric(level, levels, 5.0, 50.0)
    x = _to_float(img)
    return _to_uint8(x + rng.normal(0.0, std, size=x.shape).astype(np.float32))


def jpeg(img: np.ndarray, level: int, rng: np.random.Generator, levels: int = 5) -> np.ndarray:
    """JPEG compression (PIL, 4:2:0), quality 50 -> 3."""
    quality = _int_schedule(level, levels, 50, 3)
    _to_float(img)  # validates the input
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


def contrast_decrease(img: np.ndarray, level: int, rng: np.random.Generator, levels: int = 5) -> np.ndarray:
    """Contrast reduction towards the mean luminance, contrast factor 0.8 -> 0.2."""
    factor = _geometric(level, levels, 0.8, 0.2)
    x = _to_float(img)
    mean = float(_luminance(x).mean())
    return _to_uint8(mean + factor * (x - mean))


def pixelate(img: np.ndarray, level: int, rng: np.random.Generator, levels: int = 5) -> np.ndarray:
    """Pixelation: every block x block tile replaced by its mean, block 2 -> 12 px."""
    block = _int_schedule(level, levels, 2, 12)
    x = _to_float(img)
    h, w = x.shape[:2]
    ph, pw = -h % block, -w % block
    padded = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hb, wb = padded.shape[0] // block, padded.shape[1] // block
    means = padded.reshape(hb, block, wb, block, 3).mean(axis=(1, 3))
    out = np.repeat(np.repeat(means, block, axis=0), block, axis=1)[:h, :w]
    return _to_uint8(out)


def colour_saturation(img: np.ndarray, level: int, rng: np.random.Generator, levels: int = 5) -> np.ndarray:
    """Colour saturation loss: blend with the luminance, saturation factor 0.7 -> 0.0 (grey)."""
    factor = _linear(level, levels, 0.7, 0.0)
    x = _to_float(img)
    y = _luminance(x)
    return _to_uint8(y + factor * (x - y))


def quantisation(img: np.ndarray, level: int, rng: np.random.Generator, levels: int = 5) -> np.ndarray:
    """Uniform per-channel quantisation to 24 -> 3 levels (cell mid-points)."""
    n = _int_schedule(level, levels, 24, 3)
    x = _to_float(img)
    q = np.minimum(np.floor(x * (n / 256.0)), n - 1)
    return _to_uint8((q + 0.5) * (256.0 / n))


#: name -> f(image (H, W, 3) uint8, level 1..levels, rng, levels=5) -> distorted image (H, W, 3) uint8
DISTORTIONS: dict[str, DistortionFn] = {
    "gaussian_blur": gaussian_blur,
    "white_noise": white_noise,
    "jpeg": jpeg,
    "contrast_decrease": contrast_decrease,
    "pixelate": pixelate,
    "colour_saturation": colour_saturation,
    "quantisation": quantisation,
}

#: distortion type ids used in the file names, taken from the real datasets' type lists
KADID_TYPE_IDS: dict[str, int] = {
    "gaussian_blur": 1,
    "white_noise": 11,
    "jpeg": 10,
    "contrast_decrease": 25,
    "pixelate": 21,
    "colour_saturation": 7,
    "quantisation": 22,
}
TID_TYPE_IDS: dict[str, int] = {
    "gaussian_blur": 8,
    "white_noise": 1,
    "jpeg": 10,
    "contrast_decrease": 17,
    "pixelate": 24,
    "colour_saturation": 18,
    "quantisation": 7,
}

# ----------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------

#: how much of the quality scale a distortion takes away at its strongest level. The same for every distortion,
#: so the label depends on the level only: with a random (offline) backbone the demo's teacher can learn how strong
#: a distortion is, but not per-type perceptual severities (measured: a linear probe on the frozen random features
#: reaches held-out SRCC ~0.56 with level-only labels and ~0.39 with per-type weights, patch 64).
SEVERITY: dict[str, float] = dict.fromkeys(
    ("gaussian_blur", "white_noise", "jpeg", "contrast_decrease", "pixelate", "colour_saturation", "quantisation"),
    0.8,
)

LABEL_RULE = (
    "u = 1 - w[d] * level / levels (level 1 = mildest; w = "
    + ", ".join(f"{name} {w:.2f}" for name, w in SEVERITY.items())
    + "); KADID-10k dmos = round(1 + 4*u, 2) on 1-5, TID2013 MOS = round(9*u, 5) on 0-9; higher = better; "
    "KADID var and TID2013 mos_std are 0 (no raters)."
)


def quality_fraction(distortion: str, level: int, levels: int = 5) -> float:
    """The rule's quality u in (0, 1): 1 - SEVERITY[distortion] * level / levels."""
    if distortion not in SEVERITY:
        raise UserError(f"unknown distortion {distortion!r}; known: {', '.join(SEVERITY)}")
    _check_level(level, levels)
    return 1.0 - SEVERITY[distortion] * level / levels


def kadid_score(distortion: str, level: int, levels: int = 5) -> float:
    """KADID-10k style label on 1-5 (higher = better)."""
    return round(1.0 + 4.0 * quality_fraction(distortion, level, levels), 2)


def tid_score(distortion: str, level: int, levels: int = 5) -> float:
    """TID2013 style MOS on 0-9 (higher = better)."""
    return round(9.0 * quality_fraction(distortion, level, levels), 5)


# ----------------------------------------------------------------------------------------------------------
# Source photos and the split
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Content:
    """A region of a photo, cropped to the target aspect ratio (placed by `anchor`) and resized."""

    name: str
    photo: str  # file name inside skimage/data
    region: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1; None = the whole photo
    anchor: tuple[float, float] = (0.5, 0.5)
    fraction: tuple[float, float, float, float] | None = None  # the region as fractions of the photo's size


_SPLIT: dict[str, tuple[_Content, ...]] = {
    "train": (  # 4 photos, 6 contents
        _Content("astronaut_top", "astronaut.png", (0, 0, 512, 256)),
        _Content("astronaut_bottom", "astronaut.png", (0, 256, 512, 512)),
        _Content("chelsea", "chelsea.png"),
        _Content("coffee", "coffee.png"),
        _Content("motorcycle_rear", "motorcycle_left.png", (0, 0, 370, 500)),
        _Content("motorcycle_front", "motorcycle_left.png", (371, 0, 741, 500)),
    ),
    "test": (  # 2 photos, 3 contents
        _Content("rocket_left", "rocket.jpg", (0, 0, 360, 427), (0.5, 1.0)),
        _Content("rocket_right", "rocket.jpg", (360, 0, 640, 427), (0.5, 1.0)),
        _Content("retina", "retina.jpg", (305, 380, 1105, 980)),
    ),
}

# The reference pools: many pristine views of every photo that is NOT held-out content (so a student learns to
# ignore which reference it drew). Training pool: the four quadrants of each photo; testing pool: each whole photo
# and its centre, other views than the training pool's. The held-out photos never appear in a pool.
_POOL_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
                "ihc.png", "hubble_deep_field.jpg")
_POOL_VIEWS = {
    "ref_train": (("q1", (0.0, 0.0, 0.5, 0.5)), ("q2", (0.5, 0.0, 1.0, 0.5)),
                  ("q3", (0.0, 0.5, 0.5, 1.0)), ("q4", (0.5, 0.5, 1.0, 1.0))),
    "ref_test": (("whole", (0.0, 0.0, 1.0, 1.0)), ("centre", (0.25, 0.25, 0.75, 0.75))),
}
for _group, _views in _POOL_VIEWS.items():
    _SPLIT[_group] = tuple(_Content(f"{Path(photo).stem}_{view}", photo, fraction=box)
                           for photo in _POOL_PHOTOS for view, box in _views)
_GROUP_INDEX = {group: i for i, group in enumerate(_SPLIT)}


def _skimage_data_dir() -> Path:
    """The `data` folder inside the installed scikit-image package (located without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("scikit-image is not installed; its bundled sample photos are the demo's sources")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load_content(content: _Content, size: tuple[int, int]) -> np.ndarray:
    path = _skimage_data_dir() / content.photo
    if not path.is_file():
        raise UserError(f"sample photo {path} is missing from the installed scikit-image package")
    w, h = size
    with Image.open(path) as im:
        im = im.convert("RGB")
        x0, y0, x1, y1 = content.region if content.region is not None else (0, 0, im.width, im.height)
        if content.fraction is not None:
            fx0, fy0, fx1, fy1 = content.fraction
            x0, x1 = round(fx0 * im.width), round(fx1 * im.width)
            y0, y1 = round(fy0 * im.height), round(fy1 * im.height)
        rw, rh = x1 - x0, y1 - y0
        if rw * h > rh * w:  # region is wider than the target: full height
            ch, cw = rh, max(1, round(rh * w / h))
        else:
            cw, ch = rw, max(1, round(rw * h / w))
        bx = x0 + round((rw - cw) * content.anchor[0])
        by = y0 + round((rh - ch) * content.anchor[1])
        out = im.resize((w, h), Image.Resampling.LANCZOS, box=(bx, by, bx + cw, by + ch))
    return np.asarray(out, dtype=np.uint8).copy()


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


class _Writer:
    """Writes files under `root` through a temporary name + rename, and records their sizes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, int] = {}

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.files[rel] = len(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write(rel, text.encode("utf-8"))


def _parse_size(size: object) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise UserError(f"size must be a (width, height) pair of integers, got {size!r}") from None
    if w < 16 or h < 16 or w > 2048 or h > 2048:
        raise UserError(f"size must be between 16x16 and 2048x2048 pixels, got {w}x{h}")
    return w, h


def _params(size: tuple[int, int], seed: int, levels: int) -> dict:
    return {
        "format": _FORMAT_TAG, "version": _FORMAT_VERSION, "size": list(size), "seed": seed, "levels": levels,
        "label_rule": LABEL_RULE,
    }


def _read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("params", {}).get("format") != _FORMAT_TAG:
        return None
    return manifest


def _files_intact(out: Path, files: object) -> bool:
    if not isinstance(files, dict) or not files:
        return False
    for rel, nbytes in files.items():
        try:
            if (out / rel).stat().st_size != nbytes:
                return False
        except OSError:
            return False
    return True


def _classify(out: Path, params: dict) -> tuple[str, dict | None]:
    """'new', 'complete' (same parameters, files intact), 'other' (another complete demo build),
    'partial' (an interrupted or damaged demo build) or 'foreign' (a folder that is not a demo build)."""
    if not out.exists():
        return "new", None
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return "new", None
    manifest = _read_manifest(out)
    if (out / INCOMPLETE_MARKER).exists():
        return "partial", manifest
    if manifest is None:
        return "foreign", None
    if not _files_intact(out, manifest.get("files")):
        return "partial", manifest
    if manifest.get("params") != params:
        return "other", manifest
    return "complete", manifest


def build_demo_dataset(
    out_dir: str | os.PathLike[str],
    *,
    size: tuple[int, int] = (256, 192),
    seed: int = 0,
    levels: int = 5,
    overwrite: bool = False,
) -> dict:
    """Build (or reuse) the demo dataset under `out_dir` and return a summary dict (see the module docstring).

    A complete build with the same parameters is reused without work.  An interrupted demo build is rebuilt.
    A complete demo build with other parameters is replaced only with `overwrite=True`; a non-empty folder
    that is not a demo build is never touched.
    """
    size = _parse_size(size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise UserError(f"levels must be an integer between 1 and {MAX_LEVELS}, got {levels!r}")
    out = Path(out_dir)
    params = _params(size, seed, levels)

    state, manifest = _classify(out, params)
    if state == "complete":
        assert manifest is not None
        return {**manifest["summary"], "reused": True}
    if state == "foreign":
        raise UserError(
            f"{out} is not empty and holds no demo build ({MANIFEST_NAME} missing); "
            "choose a new or empty folder"
        )
    if state == "other" and not overwrite:
        old = manifest["params"] if manifest else {}
        raise UserError(
            f"{out} holds a demo build with other parameters (size {old.get('size')}, "
            f"seed {old.get('seed')}, levels {old.get('levels')}); "
            "pass overwrite=True (--overwrite) to replace it"
        )

    # Mark the folder incomplete before touching anything, then clear only what this module writes.
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE_MARKER).write_text("a demo build started here and has not finished\n", encoding="utf-8")
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for entry in _OUTPUT_ENTRIES:
        if (out / entry).is_dir():
            shutil.rmtree(out / entry)
        elif (out / entry).exists():
            (out / entry).unlink()

    summary = _build(out, size, seed, levels)
    files = summary.pop("_files")
    manifest_data = {"params": params, "summary": summary, "files": files}
    _Writer(out).write_text(MANIFEST_NAME, json.dumps(manifest_data, indent=1, sort_keys=True) + "\n")
    (out / INCOMPLETE_MARKER).unlink()
    return {**summary, "reused": False}


def _write_kadid(writer: _Writer, size: tuple[int, int], levels: int, distort: Callable) -> list[tuple]:
    """KADID-10k: references and distorted images together in images/, dmos.csv sorted by dist_img."""
    rows: list[tuple[str, str, str, str]] = []
    for idx, content in enumerate(_SPLIT["train"]):
        ref = _load_content(content, size)
        ref_name = f"I{idx + 1:02d}.png"
        writer.write(f"kadid10k/images/{ref_name}", _encode(ref, "PNG"))
        for name in DISTORTIONS:
            for level in range(1, levels + 1):
                dist_name = f"I{idx + 1:02d}_{KADID_TYPE_IDS[name]:02d}_{level:02d}.png"
                img = distort("train", idx, ref, name, level)
                writer.write(f"kadid10k/images/{dist_name}", _encode(img, "PNG"))
                rows.append((dist_name, ref_name, f"{kadid_score(name, level, levels):.2f}", "0.000"))
    rows.sort()
    buf = io.StringIO()
    table = csv.writer(buf, lineterminator="\n")
    table.writerow(["dist_img", "ref_img", "dmos", "var"])
    table.writerows(rows)
    writer.write_text("kadid10k/dmos.csv", buf.getvalue())
    return rows


def _write_tid2013(writer: _Writer, size: tuple[int, int], levels: int, distort: Callable) -> list[tuple]:
    """TID2013: reference_images/I01.BMP, distorted_images/i01_08_1.bmp; rows ordered by ref, type, level."""
    tid_rows: list[tuple[str, str]] = []
    by_tid_id = sorted(DISTORTIONS, key=lambda n: TID_TYPE_IDS[n])
    for idx, content in enumerate(_SPLIT["test"]):
        ref = _load_content(content, size)
        writer.write(f"TID2013/reference_images/I{idx + 1:02d}.BMP", _encode(ref, "BMP"))
        for name in by_tid_id:
            for level in range(1, levels + 1):
                dist_name = f"i{idx + 1:02d}_{TID_TYPE_IDS[name]:02d}_{level}.bmp"
                img = distort("test", idx, ref, name, level)
                writer.write(f"TID2013/distorted_images/{dist_name}", _encode(img, "BMP"))
                tid_rows.append((f"{tid_score(name, level, levels):.5f}", dist_name))
    writer.write_text("TID2013/mos_with_names.txt", "".join(f"{mos} {n}\n" for mos, n in tid_rows))
    writer.write_text("TID2013/mos.txt", "".join(f"{mos}\n" for mos, _ in tid_rows))
    writer.write_text("TID2013/mos_std.txt", "".join("0.00000\n" for _ in tid_rows))
    return tid_rows


def _write_pools(writer: _Writer, pool_size: tuple[int, int]) -> None:
    """DIV2K-style pristine pools: train_HR/0001.png ..., val_HR/0801.png ..."""
    for group, folder, first in (("ref_train", "train_HR", 1), ("ref_test", "val_HR", 801)):
        for idx, content in enumerate(_SPLIT[group]):
            img = _load_content(content, pool_size)
            writer.write(f"DIV2K_ref/{folder}/{first + idx:04d}.png", _encode(img, "PNG"))


def _build(out: Path, size: tuple[int, int], seed: int, levels: int) -> dict:
    writer = _Writer(out)
    pool_size = (round(size[0] * POOL_SCALE), round(size[1] * POOL_SCALE))
    names = list(DISTORTIONS)

    def distort(group: str, idx: int, ref: np.ndarray, name: str, level: int) -> np.ndarray:
        key = [seed, _GROUP_INDEX[group], idx, names.index(name), level]
        return DISTORTIONS[name](ref, level, np.random.default_rng(key), levels=levels)

    rows = _write_kadid(writer, size, levels, distort)
    tid_rows = _write_tid2013(writer, size, levels, distort)
    _write_pools(writer, pool_size)

    return {
        "train_contents": [c.name for c in _SPLIT["train"]],
        "test_contents": [c.name for c in _SPLIT["test"]],
        "ref_train": [c.name for c in _SPLIT["ref_train"]],
        "ref_test": [c.name for c in _SPLIT["ref_test"]],
        "photos": {group: sorted({c.photo for c in contents}) for group, contents in _SPLIT.items()},
        "distortions": names,
        "kadid_type_ids": dict(KADID_TYPE_IDS),
        "tid_type_ids": dict(TID_TYPE_IDS),
        "levels": levels,
        "size": list(size),
        "pool_size": list(pool_size),
        "seed": seed,
        "kadid_images": len(rows),
        "tid_images": len(tid_rows),
        "label_rule": LABEL_RULE,
        "_files": dict(writer.files),
    }


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _size_arg(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--size must look like 256x192 (width x height), got {text!r}")
    return int(parts[0]), int(parts[1])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: build the demo dataset and print its summary."""
    parser = argparse.ArgumentParser(prog="python -m tools.demo_data", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True, help="output folder (use it as --dataset_dir)")
    parser.add_argument("--size", default="256x192", help="image size WxH (default 256x192)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--levels", type=int, default=5, help=f"levels, 1-{MAX_LEVELS} (default 5)")
    parser.add_argument("--overwrite", action="store_true", help="replace a demo build with other parameters")
    args = parser.parse_args(argv)

    summary = build_demo_dataset(
        args.out, size=_size_arg(args.size), seed=args.seed, levels=args.levels, overwrite=args.overwrite
    )
    out = Path(args.out)
    print(f"{'reused existing' if summary['reused'] else 'built'} demo dataset in {out}")
    print(f"  kadid10k/  : {len(summary['train_contents'])} references, {summary['kadid_images']} distorted "
          f"({', '.join(summary['train_contents'])})")
    print(f"  TID2013/   : {len(summary['test_contents'])} references, {summary['tid_images']} distorted "
          f"({', '.join(summary['test_contents'])})")
    print(f"  DIV2K_ref/ : train_HR {', '.join(summary['ref_train'])}; "
          f"val_HR {', '.join(summary['ref_test'])}")
    print(f"  distortions: {', '.join(summary['distortions'])} x {summary['levels']} levels")
    print(f"  size {summary['size'][0]}x{summary['size'][1]} (pools {summary['pool_size'][0]}x"
          f"{summary['pool_size'][1]}), seed {summary['seed']}")
    print(f"  label rule : {summary['label_rule']}")


if __name__ == "__main__":
    run_cli(main)
