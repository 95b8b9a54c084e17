"""Shared fixtures. Tests run on the CPU, offline, with small patches and `pretrained=False`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items) -> None:
    """Skip `cuda` tests without a CUDA GPU and `multigpu` tests with fewer than two (`-ra` lists them)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if "cuda" in item.keywords and gpus < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none here)"))
        elif "multigpu" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs 2 CUDA GPUs ({gpus} here)"))


@pytest.fixture(scope="session")
def default_net():
    """The network at the released defaults (self_patch_num 10, MLP_depth 9, distillation_layer 9)."""
    from models.DistillationIQA import DistillationIQANet

    torch.manual_seed(0)
    return DistillationIQANet(pretrained=False).eval()


@pytest.fixture(scope="session")
def small_net():
    """A small network (self_patch_num 2, MLP_depth 2) for fast forward passes."""
    from models.DistillationIQA import DistillationIQANet

    torch.manual_seed(0)
    return DistillationIQANet(self_patch_num=2, MLP_depth=2, distillation_layer=4, pretrained=False).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast, and much faster on a busy machine (spinning threads crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
