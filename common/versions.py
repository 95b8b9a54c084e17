"""The oldest torch this project runs on, checked when a command line starts."""

from __future__ import annotations

import re

import torch

from common.errors import UserError

MIN_TORCH = (2, 3)  # torch.amp.GradScaler (every training run) exists from torch 2.3 on


def check_torch_version(version: str | None = None) -> None:
    """`UserError` in one line when the installed torch (or `version`) is older than `MIN_TORCH`."""
    version = str(torch.__version__ if version is None else version)
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and (int(found.group(1)), int(found.group(2))) < MIN_TORCH:
        wanted = ".".join(map(str, MIN_TORCH))
        raise UserError(f"torch {version} is installed; this project needs torch >= {wanted} "
                        "(pip install -r requirements.txt)")
