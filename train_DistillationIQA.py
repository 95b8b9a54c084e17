"""Train the CVRKD-IQA NAR-student with the frozen FR-teacher and the KD feature loss.

    python train_DistillationIQA.py --self_patch_num 10 --patch_size 224 \
        --teacherNet_model_path ./model_zoo/FR_teacher_cross_dataset.pth
    torchrun --nproc_per_node=4 train_DistillationIQA.py ...
"""

from __future__ import annotations

import argparse

from common.errors import run_cli
from option_train_DistillationIQA import set_args
from tools import engine
from tools.utils import cleanup_distributed


def main(args: argparse.Namespace) -> dict:
    engine.check_student_training_set(args)
    run = engine.setup_run(args)
    try:
        teacher = engine.load_frozen_teacher(args, run.device)
        role = engine.Role(name="NAR_student", train_mode="lq_hq_ref", test_ref_key="ref", teacher=teacher)
        weights = args.studentNet_model_path  # optional: continue from these student weights
        return engine.train_and_evaluate(run, role, lambda: engine.build_network(
            args, run.device, weights=weights, role="student", option="--studentNet_model_path"))
    finally:
        run.close()
        cleanup_distributed()


if __name__ == "__main__":
    run_cli(lambda: main(set_args()))
