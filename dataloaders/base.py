"""The base dataset: sample list handling and patch sampling for the three modes.

Subclasses only parse their label file(s) (`read_index`) and declare `name`, `higher_is_better`,
`has_aligned_reference` and `layout` (the expected folder layout, quoted in error messages).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from PIL import Image

from common.errors import UserError
from common.files import cannot_read
from dataloaders.image_io import image_size, load_rgb
from dataloaders.ref_cache import CacheEntry, ReferenceCache
from dataloaders.sampling import fit_patch_size, fitted_size, independent_patches, paired_patches, to_uint8_tensor

# Each mode and the item key of the reference the network compares the LQ patches with: the pixel-aligned HQ
# image for the FR-teacher ('lq_hq'), a non-aligned HQ image of other content for the NAR-student ('lq_hq_ref',
# whose items also carry the aligned 'hq' for the teacher's KD view). 'lq' yields the distorted patches only.
REFERENCE_KEY: dict[str, str | None] = {"lq": None, "lq_hq": "hq", "lq_hq_ref": "ref"}
MODES = tuple(REFERENCE_KEY)


class Sample(NamedTuple):
    """One scored image: its path, its pixel-aligned reference (None if authentic), label, content id."""

    lq_path: Path
    hq_path: Path | None
    label: float
    content_id: int


def duplicate_labels(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Images listed more than once in the label file(s): path, labels, and whether the labels conflict."""
    labels: dict[Path, list[float]] = {}
    for s in samples:
        labels.setdefault(s.lq_path, []).append(s.label)
    return [{"path": str(path), "labels": values, "conflicting": len(set(values)) > 1}
            for path, values in labels.items() if len(values) > 1]


def duplicate_line(duplicate: dict[str, Any]) -> str:
    """One entry of `duplicate_labels` as `python -m dataloaders check` and the runs word it."""
    kind = "conflicting labels" if duplicate["conflicting"] else "listed twice"
    return f"  {kind}: {duplicate['path']} ({', '.join(f'{v:g}' for v in duplicate['labels'])})"


class IQADataset(torch.utils.data.Dataset):
    """An IQA dataset read from `root`, yielding patch tensors for one of the modes in MODES.

    mode 'lq': LQ patches only; 'lq_hq': LQ + pixel-aligned HQ patches (teacher; synthetic datasets
    only); 'lq_hq_ref': LQ + aligned HQ (when the dataset has one) + non-aligned reference patches.
    'lq_hq' pairs get paired random flips and a 180-degree rotation in training, and also in evaluation
    with `augment_eval` (as the original evaluated its teacher).
    Patches are uint8 tensors [p, 3, s, s]; `sampling.to_model_input` normalises them on the device.
    Every random choice of item `index` in `epoch` comes from `np.random.default_rng([seed, epoch,
    index])`, so samples do not depend on worker processes or global random state.
    """

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    has_aligned_reference: ClassVar[bool] = False
    layout: ClassVar[str] = ""
    resize_to: ClassVar[tuple[int, int] | None] = None  # (w, h) every LQ image is resized to before cropping
    ref_cache: ReferenceCache | None = None  # set by use_cache()

    # ---- hooks for subclasses -------------------------------------------------------------------
    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        """Parse the label file(s) under `root`: every scored image and the number of contents.

        Content ids index the sorted list of reference images (synthetic) or the images (authentic).
        Missing image files are not an error here (see `missing_files`); a missing or malformed label
        file is (UserError naming it).
        """
        raise NotImplementedError

    @classmethod
    def read_index_checked(cls, root: Path) -> tuple[list[Sample], int]:
        """`read_index`, with a file or folder that cannot be read (permissions) a `UserError` naming it."""
        try:
            return cls.read_index(Path(root))
        except OSError as err:
            raise cannot_read(err, cls.name) from None

    # ---- helpers for the hooks -------------------------------------------------------------------
    @classmethod
    def layout_error(cls, root: Path, problem: str) -> UserError:
        """A UserError saying what is wrong under `root` and showing the expected layout."""
        return UserError(f"{cls.name}: {problem}\nexpected layout of {root}:\n{cls.layout}")

    @classmethod
    def require(cls, root: Path, *candidates: str, folder: bool = False) -> Path:
        """The first existing `root/candidate` (file, or folder if `folder`); layout error if none exists."""
        if not root.is_dir():
            raise cls.layout_error(root, f"dataset folder not found: {root}")
        for rel in candidates:
            path = root / rel
            if (path.is_dir() if folder else path.is_file()):
                return path
        kind = "folder" if folder else "label file"
        raise cls.layout_error(root, f"{kind} not found: {root / candidates[0]}")

    @classmethod
    def bad_row(cls, path: Path, line_no: int, expected: str, got: Any, unit: str = "line") -> UserError:
        """A UserError for one malformed row (`unit` line/row/entry number `line_no`) of a label file."""
        return UserError(f"{cls.name}: bad row in {path}, {unit} {line_no}: expected {expected}, got {got!r}")

    # ---- construction ------------------------------------------------------------------------------
    def __init__(self, root: str | os.PathLike, mode: str = "lq", *, patch_size: int = 224,
                 patch_num: int = 10, train: bool = False, content_ids: Sequence[int] | None = None,
                 ref_paths: Sequence[str | os.PathLike] | None = None, seed: int = 0, repeats: int = 1,
                 upscale: bool = False, augment_eval: bool = False) -> None:
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "lq_hq" and not self.has_aligned_reference:
            raise UserError(f"{self.name} is an authentic dataset without pixel-aligned references: "
                            "the FR teacher (mode 'lq_hq') cannot be trained or tested on it")
        if mode == "lq_hq_ref" and not ref_paths:
            raise UserError("mode 'lq_hq_ref' needs non-aligned reference images (ref_paths is empty)")
        if patch_size < 1 or patch_num < 1 or repeats < 1:
            raise UserError(f"patch_size, patch_num and repeats must be >= 1 "
                            f"(got {patch_size}, {patch_num}, {repeats})")
        if seed < 0:
            raise UserError(f"seed must be >= 0 (got {seed})")
        self.root = Path(root)
        self.mode, self.train = mode, train
        self.augment_eval = augment_eval
        self.patch_size, self.patch_num = patch_size, patch_num
        self.seed, self.repeats, self.upscale = seed, repeats, upscale
        self.ref_paths = [Path(p) for p in ref_paths] if ref_paths else []
        entries, self.num_contents = self.read_index_checked(self.root)
        conflicts = [d for d in duplicate_labels(entries) if d["conflicting"]]
        if conflicts:  # which label would be meant is unknown: `python -m dataloaders check` calls it NOT usable
            shown = "\n".join(duplicate_line(d) for d in conflicts[:10])
            more = f"\n  ... and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
            raise UserError(f"{self.name}: {len(conflicts)} image(s) listed more than once with different labels "
                            f"under {self.root}:\n{shown}{more}\n(run `python -m dataloaders check --dataset "
                            f"{self.name} --root {self.root}` for a report)")
        if content_ids is not None:
            wanted = {int(c) for c in content_ids}
            bad = sorted(c for c in wanted if not 0 <= c < self.num_contents)
            if bad:
                raise UserError(f"{self.name}: content ids {bad[:10]} out of range "
                                f"0..{self.num_contents - 1}")
            entries = [e for e in entries if e.content_id in wanted]
        missing = self.missing_files(entries, self.ref_paths if mode == "lq_hq_ref" else ())
        if missing:
            shown = "\n  ".join(str(p) for p in missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise UserError(f"{self.name}: {len(missing)} image file(s) missing under {self.root}:\n"
                            f"  {shown}{more}\n(run `python -m dataloaders check --dataset {self.name} "
                            f"--root {self.root}` for a report)")
        self.samples: list[Sample] = [e for e in entries for _ in range(repeats)]

    def missing_files(self, entries: Sequence[Sample], ref_paths: Sequence[Path] = ()) -> list[Path]:
        """Image files that the entries (LQ, and HQ in modes that read it) and references need but lack."""
        needed: dict[Path, None] = {}
        for e in entries:
            needed[e.lq_path] = None
            if e.hq_path is not None and self.mode != "lq":
                needed[e.hq_path] = None
        needed.update(dict.fromkeys(ref_paths))
        try:
            return [p for p in needed if not p.is_file()]
        except OSError as err:  # a folder that cannot be searched
            raise cannot_read(err, self.name) from None

    # ---- sampling ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: Path, resize: tuple[int, int] | None = None) -> np.ndarray:
        if self.ref_cache is not None:
            cached = self.ref_cache.get(self._cache_key(path, resize))
            if cached is not None:
                return cached
        return self._decode(path, resize)

    def _decode(self, path: Path, resize: tuple[int, int] | None = None) -> np.ndarray:
        img = load_rgb(path)
        if resize is not None and img.size != resize:
            img = img.resize(resize, Image.Resampling.BICUBIC)
        return np.asarray(fit_patch_size(img, self.patch_size, self.upscale, path))

    def _cache_key(self, path: Path, resize: tuple[int, int] | None) -> tuple:
        return str(path), resize, self.patch_size, self.upscale

    def reference_images(self) -> list[tuple[Path, tuple[int, int] | None]]:
        """(path, resize) of the images many samples read, most reused first: the pixel-aligned references
        (in the modes that read them), then the non-aligned reference pool (mode 'lq_hq_ref')."""
        aligned = {} if self.mode == "lq" else dict.fromkeys(s.hq_path for s in self.samples if s.hq_path)
        pool = self.ref_paths if self.mode == "lq_hq_ref" else []
        return [(p, self.resize_to) for p in aligned] + [(p, None) for p in pool]

    def use_cache(self, cache: ReferenceCache) -> None:
        """Decode `reference_images()` into `cache` (as far as its budget allows) and read them from it."""
        entries = []
        for path, resize in self.reference_images():
            try:
                w, h = fitted_size(resize or image_size(path), self.patch_size, self.upscale, path)
            except UserError:
                continue  # left to per-sample decoding; the check before training lists every such image
            entries.append(CacheEntry(self._cache_key(path, resize), (h, w, 3), partial(self._decode, path, resize)))
        cache.add(entries, label=f"{self.name} ({'training' if self.train else 'evaluation'}, {self.mode})")
        self.ref_cache = cache

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        index, epoch = int(index), int(epoch)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {self.name} with {len(self.samples)} samples")
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        s, p = self.patch_size, self.patch_num
        lq = self._load(sample.lq_path, self.resize_to)
        item: dict[str, Any] = {}
        if self.mode != "lq" and sample.hq_path is not None:
            hq = self._load(sample.hq_path, self.resize_to)
            if hq.shape != lq.shape:
                raise UserError(f"{sample.lq_path} ({lq.shape[1]}x{lq.shape[0]}) and its reference "
                                f"{sample.hq_path} ({hq.shape[1]}x{hq.shape[0]}) differ in size; "
                                "they must be pixel-aligned")
            augment = self.mode == "lq_hq" and (self.train or self.augment_eval)
            lq_p, hq_p = paired_patches(lq, hq, rng, s, p, augment=augment)
            item["lq"], item["hq"] = to_uint8_tensor(lq_p), to_uint8_tensor(hq_p)
        else:
            item["lq"] = to_uint8_tensor(independent_patches(lq, rng, s, p, flip=self.train))
        if self.mode == "lq_hq_ref":
            ref_path = self.ref_paths[int(rng.integers(len(self.ref_paths)))]
            ref = self._load(ref_path)
            ref_p = independent_patches(ref, rng, s, p, flip=self.train, rotate=self.train)
            item["ref"] = to_uint8_tensor(ref_p)
        item["label"] = torch.tensor(sample.label, dtype=torch.float32)
        item["index"] = index
        return item

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, mode={self.mode!r}, samples={len(self)}, "
                f"contents={self.num_contents}, train={self.train})")
