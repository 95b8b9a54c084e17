"""Train the CVRKD-IQA FR-teacher: distorted image + pixel-aligned HQ reference.

    python train_DistillationIQA_FR.py --self_patch_num 10 --patch_size 224
    torchrun --nproc_per_node=4 train_DistillationIQA_FR.py ...
"""

from __future__ import annotations

import argparse

from common.errors import run_cli
from option_train_DistillationIQA_FR import set_args
from tools import engine
from tools.networks import build_network
from tools.utils import cleanup_distributed


def main(args: argparse.Namespace) -> dict:
    run = engine.setup_training_run(args)
    try:
        role = engine.Role(name="FRIQA_teacher", mode="lq_hq")
        return engine.train_and_evaluate(args, run, role, lambda: build_network(
            run.device, self_patch_num=args.self_patch_num, distillation_layer=args.distillation_layer,
            pretrained=args.pretrained, backbone_bn_eval=args.freeze_backbone_bn,
            weights=args.teacherNet_model_path,  # optional: fine-tune from these weights
            role="teacher", option="--teacherNet_model_path"))
    finally:
        run.close()
        cleanup_distributed()


if __name__ == "__main__":
    run_cli(lambda: main(set_args()))
