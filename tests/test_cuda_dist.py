"""torchrun paths on real GPUs: NCCL serves CUDA tensors only, so these show that every collective, the on-main
decisions and the sharded evaluation run under it. Skipped without CUDA (see tests/conftest.py); run them with
`pytest -m "cuda or multigpu"` on a GPU machine."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from common.errors import UserError
from tests.test_collectives import check_two_processes, run_two_processes
from tools import collectives, run_folder
from tools.utils import DistInfo


@pytest.mark.cuda
def test_collectives_under_a_one_process_nccl_group(tmp_path):
    """`torchrun --nproc_per_node=1` on a GPU: NCCL refuses CPU tensors, the collectives put theirs on the GPU."""
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        info = DistInfo(True, 0, 1, 0, device)
        assert collectives.mean_across([1.0, 2.0, 6.0], info) == pytest.approx(3.0)
        assert collectives.gather_1d(torch.arange(3.0), info).tolist() == [0.0, 1.0, 2.0]
        assert collectives.any_rank(True, info) and not collectives.any_rank(False, info)
        assert collectives.broadcast_text("ok", info) == "ok"
        with pytest.raises(UserError, match="stop"):
            run_folder.on_main(info, lambda: (_ for _ in ()).throw(UserError("stop")))
        collectives.barrier(info)
    finally:
        dist.destroy_process_group()


@pytest.mark.multigpu
def test_two_nccl_processes_collectives_and_sharded_evaluation(tmp_path):
    """The 2-process check of tests/test_collectives.py under NCCL on two GPUs: the collectives' values, and the
    sharded evaluation equal to one process's within fp32 rounding (two GPUs need not round alike)."""
    check_two_processes(run_two_processes(tmp_path, "nccl"), exact=False)


@pytest.mark.cuda
def test_torchrun_one_process_teacher_epoch_on_a_gpu(tmp_path):
    """The run that used to stop at the end of epoch 0 ("No backend type associated with device type cpu"): a
    CUDA torchrun teacher run of one process, trained, evaluated (sharded) and saved."""
    from tests.test_end_to_end import SMALL, run_script
    from tools.dataset_fixtures import make_tid2013

    make_tid2013(tmp_path / "dataset" / "TID2013", n_refs=2)
    options = [*SMALL, "--gpu_ids", "0", "--batch_size", "4", "--epochs", "1", "--test_datasets", "tid2013",
               "--checkpoint_dir", "gpu_run", "--train_dataset", "tid2013"]
    result = run_script("train_DistillationIQA_FR.py", *options, cwd=tmp_path,
                        launcher=["-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29519"])
    assert "device cuda:0" in result.stdout and "world size 1" in result.stdout
    assert (tmp_path / "gpu_run" / "models" / "last.pth").is_file()
