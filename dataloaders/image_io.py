"""Image reading (any grey/RGBA/palette/16-bit image as 8-bit RGB), folder listings, case-free lookup."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import UserError
from common.files import list_folder

# The image files the project reads (folders of references, folders to score), any case.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Modes whose samples hold more than 8 bits: scaled to 0..255, not clipped as PIL's convert() would do.
_WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert an opened image of any mode to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 1.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 255.0
        else:
            scale = _WIDE_MODES[img.mode]
        grey = np.clip(np.rint(np.nan_to_num(arr) / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Read an image as 8-bit RGB (grey, RGBA, palette and 16-bit inputs converted).

    Raises UserError naming the file when it is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with _large_image_warnings(path), Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels; UserError if unreadable."""
    try:
        with _large_image_warnings(path), Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None


@contextlib.contextmanager
def _large_image_warnings(path: str | os.PathLike) -> Iterator[None]:
    """PIL's warning about a very large image (a possible decompression bomb) as one line naming the file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            print(f"warning: {path}: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def is_image_file(path: Path) -> bool:
    """True for a file whose extension is a supported image type (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_reference_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files (IMAGE_EXTENSIONS, any case) directly in `folder`.

    Raises UserError naming the folder when it is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"reference image folder not found: {folder} (expected a folder of HQ images, "
                        "e.g. DIV2K_ref/train_HR/0001.png ...)")
    images = [p for p in list_folder(folder, "reference image folder") if is_image_file(p)]
    if not images:
        raise UserError(f"no image (png/jpg/jpeg/bmp/tif) in reference folder {folder}")
    return images


class CaseInsensitiveLookup:
    """Resolve file names inside folders ignoring case; each folder is listed once per lookup object."""

    def __init__(self) -> None:
        self._listings: dict[Path, dict[str, str]] = {}

    def _listing(self, folder: Path) -> dict[str, str]:
        if folder not in self._listings:
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            index: dict[str, str] = {}
            for name in names:
                index.setdefault(name.lower(), name)
            self._listings[folder] = index
        return self._listings[folder]

    def find(self, folder: Path, name: str) -> Path | None:
        """The existing entry `folder/name` (exact case first, then ignoring case), or None."""
        exact = folder / name
        if exact.exists():
            return exact
        actual = self._listing(folder).get(name.lower())
        return folder / actual if actual is not None else None

    def resolve(self, folder: Path, name: str) -> Path:
        """Like find(), but returns `folder/name` (which does not exist) when nothing matches."""
        return self.find(folder, name) or folder / name
