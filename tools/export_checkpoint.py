"""Write any checkpoint in the authors' released format, for the original code and other toolboxes.

    python -m tools.export_checkpoint checkpoint_DistillationIQA/models/best.pth NAR_student_export.pth

The output is a plain state dict (no nesting, no `module.` prefix, no optimiser or options) with every key of
the authors' released files, in their order. The 14 keys that the released files carry but the forward pass
never uses are kept from the input when it has them (an authentic released file), and otherwise get fixed
placeholder values: zeros for the unused HyperIQA convolution/linear weights and biases, 0.25 for the PReLU
weight (PyTorch's default) and 1 / 0 for the unused BatchNorm weight / bias (PyTorch's defaults).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from common.errors import UserError, run_cli
from common.files import atomic_torch_save, refuse_inputs, safe_torch_load
from models.DistillationIQA import (
    UNUSED_CHECKPOINT_KEYS,
    DistillationIQANet,
    checkpoint_patch_num,
    extract_state_dict,
)

# The unused keys in the released files' order, with their shapes there and the placeholder value.
PLACEHOLDERS: dict[str, tuple[tuple[int, ...], float]] = {
    "feature_extractor.lda1_pool.0.weight": ((16, 256, 1, 1), 0.0),
    "feature_extractor.lda1_fc.weight": ((512, 1024), 0.0),
    "feature_extractor.lda1_fc.bias": ((512,), 0.0),
    "feature_extractor.lda2_pool.0.weight": ((32, 512, 1, 1), 0.0),
    "feature_extractor.lda2_fc.weight": ((512, 512), 0.0),
    "feature_extractor.lda2_fc.bias": ((512,), 0.0),
    "feature_extractor.lda3_pool.0.weight": ((64, 1024, 1, 1), 0.0),
    "feature_extractor.lda3_fc.weight": ((512, 256), 0.0),
    "feature_extractor.lda3_fc.bias": ((512,), 0.0),
    "feature_extractor.lda4_fc.weight": ((512, 2048), 0.0),
    "feature_extractor.lda4_fc.bias": ((512,), 0.0),
    "regressor.relu1.weight": ((1,), 0.25),
    "regressor.bn1.weight": ((256,), 1.0),
    "regressor.bn1.bias": ((256,), 0.0),
}

# Where the released files put the modules (their network defines the difference encoder before the LQ one).
_RELEASED_PREFIX_ORDER = ("lda1_process.", "lda2_process.", "lda3_process.", "lda4_process.",
                          "MLP_encoder_diff.", "MLP_encoder_lq.")
_RELEASED_REGRESSOR_ORDER = ("regressor.l1.weight", "regressor.l1.bias", "regressor.relu1.weight",
                             "regressor.bn1.weight", "regressor.bn1.bias", "regressor.bn1.running_mean",
                             "regressor.bn1.running_var", "regressor.bn1.num_batches_tracked",
                             "regressor.l2.weight", "regressor.l2.bias")


def unused_keys_in(source: Mapping[str, Tensor]) -> list[str]:
    """The unused released keys that `source` holds with the released shapes (kept as they are on export)."""
    return [key for key, (shape, _) in PLACEHOLDERS.items()
            if isinstance(source.get(key), Tensor) and tuple(source[key].shape) == shape]


def released_state_dict(state: Mapping[str, Tensor], source: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The network's `state` with the unused keys added (from `source` where it has them with the released
    shapes, else placeholders), ordered as the released files."""
    source = source or {}
    kept = unused_keys_in(source)
    unused = {key: source[key] if key in kept else torch.full(shape, value, dtype=torch.float32)
              for key, (shape, value) in PLACEHOLDERS.items()}
    merged = {**state, **unused}
    ordered = [k for k in state if k.startswith("feature_extractor.")]
    ordered += [k for k in PLACEHOLDERS if k.startswith("feature_extractor.")]
    for prefix in _RELEASED_PREFIX_ORDER:
        ordered += [k for k in state if k.startswith(prefix)]
    ordered += list(_RELEASED_REGRESSOR_ORDER)
    if sorted(ordered) != sorted(merged):
        raise ValueError(f"unexpected keys: {sorted(set(merged).symmetric_difference(ordered))[:8]}")
    return {key: merged[key].detach().clone() for key in ordered}


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[dict[str, Tensor], list[str]]:
    """Read any checkpoint this project loads and write it to `dst` in the released format (atomically).

    Returns the state dict written and the unused keys kept from the input (the others are placeholders)."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"checkpoint not found: {src}")
    if dst.is_dir():
        raise UserError(f"{dst} is a folder: give the output file name (e.g. {dst / src.name})")
    refuse_inputs(dst, "output", [src])
    raw = extract_state_dict(safe_torch_load(src), str(src), keep_unused=True)
    used = {k: v for k, v in raw.items() if k not in UNUSED_CHECKPOINT_KEYS}
    patch_num = checkpoint_patch_num(used) or 10
    net = DistillationIQANet.from_checkpoint(used, self_patch_num=patch_num)  # checks every key and shape
    state = released_state_dict(net.state_dict(), raw)
    atomic_torch_save(state, dst)
    return state, unused_keys_in(raw)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.export_checkpoint",
        description="Write a checkpoint (this project's, a DataParallel one or a released one) as a plain state "
                    "dict with exactly the keys of the authors' released files.")
    parser.add_argument("input", metavar="IN", help="checkpoint to read")
    parser.add_argument("output", metavar="OUT", help="file to write (replaced atomically)")
    args = parser.parse_args(argv)
    state, kept = export_checkpoint(args.input, args.output)
    print(f"wrote {args.output}: {len(state)} keys in the released format "
          f"({len(PLACEHOLDERS) - len(kept)} unused keys filled with placeholders, {len(kept)} kept from the input)")


if __name__ == "__main__":
    run_cli(main)
