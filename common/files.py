"""Files written atomically (a crash never leaves a half-written file) and checkpoints read safely.

The ground floor of the project: every package may use it; it imports nothing of the project but its errors.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from common.errors import UserError


def _umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file and a rename; a failure (full disk, read-only folder) is a
    `UserError` naming the file, and the previous content of `path` stays as it was. The file gets the
    mode a plain `open()` would give it (0o666 less the umask), not mkstemp's 0o600."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
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
    atomic_write(path, lambda handle: handle.write(data))


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy `source` to `path` through a temporary file and a rename."""
    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle, 16 << 20)
    atomic_write(path, copy)


def cannot_read(err: OSError, what: str = "") -> UserError:
    """The one-line error for a file or folder that cannot be read (e.g. no permission)."""
    where = err.filename if err.filename is not None else "a file"
    return UserError(f"{what}{': ' if what else ''}cannot read {where}: {err.strerror or err}")


def list_folder(folder: str | os.PathLike, what: str = "") -> list[Path]:
    """The entries of `folder`, sorted; a folder that cannot be read is a `UserError` naming it and `what`."""
    try:
        return sorted(Path(folder).iterdir())
    except OSError as err:
        raise cannot_read(err, what) from None


def refuse_inputs(path: str | os.PathLike, what: str, inputs: Iterable[str | os.PathLike]) -> None:
    """`UserError` when the output `path` is one of `inputs` (the same file, also through a link): writing it
    would destroy what is read."""
    if not os.path.exists(path):
        return
    for source in inputs:
        try:
            same = os.path.samefile(path, source)
        except OSError:
            continue
        if same:
            raise UserError(f"{what} {path} is the input {source}: writing it would replace that input; "
                            "choose another file name")


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


def json_safe(obj: object) -> object:
    """`obj` with every NaN or infinite float replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def write_json(path: str | os.PathLike, obj: object) -> None:
    """`obj` as strict JSON (NaN and infinities written as null), atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


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
