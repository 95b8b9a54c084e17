"""This project's checkpoints: their roles, the RNG state they carry, their options; score files."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from common.files import ensure_writable_folder, safe_torch_load, write_csv, write_json

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


def check_figure_path(path: str | os.PathLike, what: str = "--figure") -> Path:
    """Check before any work that `path` names a file (not a folder) in a folder that can take it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, expected a file name (e.g. {path / 'scores.png'})")
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
def rng_state(device: torch.device | None = None) -> dict:
    """Every RNG state the training touches, in a form `torch.load(weights_only=True)` accepts: Python's,
    NumPy's, the CPU generator's and, for a CUDA `device`, that GPU's generator (only the run's own GPU: a
    resume may see another number of GPUs)."""
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping, device: torch.device | None = None) -> list[str]:
    """Restore `rng_state`'s states; the CUDA generator's onto `device` when it is a GPU. Older checkpoints hold a
    list of every visible GPU's state: the entry of `device`'s index is used when there is one. Returns the log
    lines of what could not be restored."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if device is None or device.type != "cuda" or saved is None:
        return []
    index = torch.cuda.current_device() if device.index is None else device.index
    if isinstance(saved, (list, tuple)):  # written before only the run's own GPU was saved
        if index >= len(saved):
            return [f"resume: the checkpoint holds no CUDA RNG state for GPU {index} (it saved {len(saved)}): "
                    "that GPU's generator keeps its seed"]
        saved = saved[index]
    torch.cuda.set_rng_state(saved, device)
    return []


def to_cpu(value: object) -> object:
    """`value` (tensors in dicts, lists and tuples, as state dicts and optimiser states are) with every tensor on
    the CPU, so that a plain `torch.load` works on a machine without a GPU. CPU tensors are not copied."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):  # dicts and OrderedDicts (state dicts keep their `_metadata`)
        moved = type(value)((k, to_cpu(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            moved._metadata = value._metadata
        return moved
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_cpu(v) for v in value)
    return value


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
