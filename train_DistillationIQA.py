"""Train the CVRKD-IQA NAR-student with the frozen FR-teacher and the KD feature loss.

    python train_DistillationIQA.py --self_patch_num 10 --patch_size 224 \
        --teacherNet_model_path ./model_zoo/FR_teacher_cross_dataset.pth
    torchrun --nproc_per_node=4 train_DistillationIQA.py ...
"""

from __future__ import annotations

import argparse

from common.errors import run_cli
from models.DistillationIQA import DistillationIQANet
from option_train_DistillationIQA import set_args
from tools import engine
from tools.epoch import Distillation
from tools.networks import build_network, check_student_training_set, load_frozen_teacher
from tools.utils import cleanup_distributed


def main(args: argparse.Namespace) -> dict:
    check_student_training_set(args.train_dataset)
    run = engine.setup_training_run(args)
    try:
        sizes = {"self_patch_num": args.self_patch_num, "distillation_layer": args.distillation_layer}
        teacher = load_frozen_teacher(args.teacherNet_model_path, run.device, **sizes)
        kd = Distillation(teacher, loss=args.distillation_loss, ratio=args.feature_loss_ratio,
                          all_diff=args.distill_all_diff_features)

        def student() -> DistillationIQANet:  # optionally continued from --studentNet_model_path
            return build_network(run.device, **sizes, pretrained=args.pretrained,
                                 backbone_bn_eval=args.freeze_backbone_bn, weights=args.studentNet_model_path,
                                 role="student", option="--studentNet_model_path")

        return engine.train_and_evaluate(args, run, engine.Role("NAR_student", "lq_hq_ref", kd), student)
    finally:
        run.close()
        cleanup_distributed()


if __name__ == "__main__":
    run_cli(lambda: main(set_args()))
