"""Checkpoint and result files, always written atomically (a crash never leaves a half-written file)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from tools.errors import UserError


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file and a rename; a failure (full disk, read-only folder) is a
    `UserError` naming the file, and the previous content of `path` stays as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path}: {err.strerror or err}") from None
        raise


def _atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy `source` to `path` through a temporary file and a rename."""
    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle, 16 << 20)
    _atomic_write(path, copy)


def ensure_writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """Create `folder` if needed and check that a file can be written in it; `UserError` naming `what` if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{what} {folder} is not writable: {err.strerror or err}") from None
    return folder


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    _atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, *paths: str | os.PathLike) -> None:
    """`torch.save` to each of `paths` (serialised once), each through a temporary file and a rename."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    for path in paths:
        _atomic_write_bytes(path, buffer.getvalue())


def write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, object]]) -> None:
    """Rows of dicts to CSV; the header is the union of the keys in first-seen order."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


SCORE_SUFFIXES = (".csv", ".json")


def check_scores_path(path: str | os.PathLike, what: str = "--output") -> Path:
    """Check before any work that `path` ends in .csv or .json and that its folder can take it."""
    path = Path(path)
    if path.suffix.lower() not in SCORE_SUFFIXES:
        raise UserError(f"{what} {path}: expected a file name ending in .csv or .json")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, expected a file name ending in .csv or .json")
    ensure_writable_folder(path.parent, f"{what} {path}: the folder")
    return path


def write_scores(path: str | os.PathLike, rows: Sequence[Mapping[str, object]]) -> None:
    """Write rows to `.csv` or `.json` by the file's suffix."""
    if check_scores_path(path).suffix.lower() == ".csv":
        write_csv(path, rows)
    else:
        write_json(path, list(rows))


def serializable_options(values: Mapping) -> dict:
    """Options as plain values for a checkpoint (lists as lists of str, dicts as str -> str)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = [str(v) for v in value]
        elif isinstance(value, dict):
            out[key] = {str(k): str(v) for k, v in value.items()}
        else:
            out[key] = str(value)
    return out


# ---- RNG state --------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every RNG state the training touches, in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def safe_torch_load(path: str | os.PathLike, context: str = "", mmap: bool = False) -> object:
    """`torch.load(weights_only=True)` on the CPU; a file it refuses becomes a `UserError` naming it.

    `mmap=True` maps the tensors instead of reading them (for a look at the other entries).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise UserError(
            f"{context}{path} is not a checkpoint that can be loaded safely (torch.load with weights_only=True "
            f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def load_training_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """Read one of this project's training checkpoints (for `--resume`), safely."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--resume: checkpoint not found: {path}")
    checkpoint = safe_torch_load(path, context="--resume: ", mmap=mmap)
    needed = {"model", "optimizer", "epoch"}
    if not isinstance(checkpoint, dict) or not needed <= set(checkpoint):
        raise UserError(f"--resume: {path} is not a training checkpoint of this project "
                        f"(expected the keys {sorted(needed)})")
    return checkpoint


# ---- roles -------------------------------------------------------------------------------------------
ROLES = {"teacher": "FR-teacher", "student": "NAR-student"}


def checkpoint_role(checkpoint: object) -> str | None:
    """'teacher' or 'student' for this project's checkpoints; None for plain state dicts (the authors' files).

    Files written before the role was recorded are told apart by their options (only the student's
    options have `distillation_loss`, only the teacher's `ref_folder_paths`).
    """
    if not isinstance(checkpoint, Mapping):
        return None
    if checkpoint.get("role") in ROLES:
        return checkpoint["role"]
    options = checkpoint.get("args")
    if isinstance(options, Mapping):
        if "distillation_loss" in options:
            return "student"
        if "ref_folder_paths" in options:
            return "teacher"
    return None


def role_with_article(role: str) -> str:
    """'an FR-teacher' or 'a NAR-student'."""
    return f"{'an' if role == 'teacher' else 'a'} {ROLES[role]}"


def require_role(checkpoint: object, role: str, where: str) -> None:
    """`UserError` when `checkpoint` records another role than `role` (files without a role pass)."""
    found = checkpoint_role(checkpoint)
    if found is not None and found != role:
        raise UserError(f"{where} is {role_with_article(found)} checkpoint; {role_with_article(role)} checkpoint "
                        "is needed here")


def load_model_checkpoint(path: str | os.PathLike, option: str, role: str) -> dict:
    """Read the checkpoint given to `option` safely and check that it is not one of the other role."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option}: checkpoint not found: {path}")
    checkpoint = safe_torch_load(path, context=f"{option}: ")
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"{option}: {path} is not a checkpoint: expected a dict of tensors, "
                        f"got {type(checkpoint).__name__}")
    require_role(checkpoint, role, f"{option} {path}")
    return dict(checkpoint)
