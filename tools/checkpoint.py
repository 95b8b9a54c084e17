"""Checkpoint and result files, always written atomically (a crash never leaves a half-written file)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from tools.errors import UserError


def _atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def write_scores(path: str | os.PathLike, rows: Sequence[Mapping[str, object]]) -> None:
    """Write rows to `.csv` or `.json` by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        write_csv(path, rows)
    elif suffix == ".json":
        write_json(path, list(rows))
    else:
        raise UserError(f"--output {path}: expected a file name ending in .csv or .json")


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


def safe_torch_load(path: str | os.PathLike, context: str = "") -> object:
    """`torch.load(weights_only=True)` on the CPU; a file it refuses becomes a `UserError` naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"{context}{path} is not a checkpoint that can be loaded safely (torch.load with weights_only=True "
            f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Read one of this project's training checkpoints (for `--resume`), safely."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--resume: checkpoint not found: {path}")
    checkpoint = safe_torch_load(path, context="--resume: ")
    needed = {"model", "optimizer", "epoch"}
    if not isinstance(checkpoint, dict) or not needed <= set(checkpoint):
        raise UserError(f"--resume: {path} is not a training checkpoint of this project "
                        f"(expected the keys {sorted(needed)})")
    return checkpoint
