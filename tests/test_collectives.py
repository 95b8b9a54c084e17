"""torchrun on the CPU: collectives on the run's device (a CUDA-only group like NCCL), the sharded evaluation with 2
gloo processes, --dist_timeout, the device made current, pinned memory, the reference cache per local process."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.errors import UserError
from dataloaders import build_dataset, build_loader
from dataloaders import ref_cache as rc
from models.DistillationIQA import DistillationIQANet
from tools import collectives, epoch, run_folder, utils
from tools.data import build_test_sets, build_train_loader
from tools.dataset_fixtures import make_kadid, make_ref_pool, make_tid2013
from tools.runtime import Run
from tools.utils import DistInfo, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
GB = 2**30


def tiny_net(seed: int) -> DistillationIQANet:
    torch.manual_seed(seed)
    return DistillationIQANet(self_patch_num=2, MLP_depth=1, distillation_layer=2, pretrained=False)


# ---- no collective outside tools/collectives.py --------------------------------------------------------
COLLECTIVE = re.compile(r"\bdist\.(all_reduce|all_gather\w*|broadcast\w*|barrier|reduce\w*|gather\w*|scatter\w*|"
                        r"send|recv|isend|irecv|all_to_all\w*|monitored_barrier)\s*\(")


def test_no_collective_outside_the_collectives_module():
    """Every collective goes through tools/collectives.py, which puts its tensors on the run's device."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in (".venv", "tests") or relative == Path("tools/collectives.py"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if COLLECTIVE.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []
    assert COLLECTIVE.search("    dist.all_gather_object(gathered, values)")  # the pattern finds what it must


# ---- a process group that, like NCCL, serves CUDA tensors only -------------------------------------------
CUDA_ONLY = "fake_cuda_only"


@pytest.fixture
def cuda_only_group(monkeypatch):
    """A 2-rank fake group for CUDA (and meta) tensors only: a CPU tensor raises as under NCCL. The run's device
    is `meta` (no CUDA here), whose tensors hold no data: results are read back as zeros."""
    from torch._C._distributed_c10d import FakeProcessGroup
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if not hasattr(dist.Backend, CUDA_ONLY.upper()):
        dist.Backend.register_backend(CUDA_ONLY, lambda store, rank, size, timeout:
                                      FakeProcessGroup._create_internal(rank, size), devices=["cuda", "meta"])
    dist.init_process_group(CUDA_ONLY, store=FakeStore(), rank=0, world_size=2)
    monkeypatch.setattr(collectives, "_to_host", lambda t: torch.zeros(t.shape, dtype=t.dtype) if t.is_meta
                        else t.cpu())
    try:
        yield DistInfo(True, 0, 2, 0, torch.device("meta"))
    finally:
        dist.destroy_process_group()


def test_student_epoch_bookkeeping_under_a_cuda_only_group(cuda_only_group, tmp_path):
    """One student epoch (loss mean, train SRCC gather), the on-main decisions and the barrier use tensors on
    the run's device: nothing reaches the group on the CPU (where NCCL would stop the run)."""
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.all_reduce(torch.zeros(2, dtype=torch.float64))  # the group refuses CPU tensors, as NCCL does
    make_kadid(tmp_path / "kadid", n_refs=2, n_types=1, n_levels=2)
    refs = make_ref_pool(tmp_path / "refs", n=2)
    dataset = build_dataset("kadid10k", tmp_path / "kadid", "lq_hq_ref", patch_size=32, patch_num=2, train=True,
                            ref_paths=refs, seed=1)
    loader = build_loader(dataset, 2, shuffle=True, seed=1)  # rank 0 of 2: half of the samples
    student, teacher = tiny_net(0), tiny_net(1).eval()
    run = Run(cuda_only_group, CPU, resolve_precision("off", CPU))
    stats = epoch.train_one_epoch(student, loader, epoch.make_optimizer(student, 1e-4, 1, 0), run.precision.scaler(),
                                  run, 0, kd=epoch.Distillation(teacher))
    assert {"loss", "train_srcc", "feature_loss", "samples_per_s"} <= set(stats)
    assert run_folder.on_main(cuda_only_group, lambda: 7) == 7
    with pytest.raises(UserError, match="refused on rank 0"):
        run_folder.on_main(cuda_only_group, lambda: (_ for _ in ()).throw(UserError("refused on rank 0")))
    collectives.barrier(cuda_only_group)
    assert collectives.any_rank(False, cuda_only_group) is False


# ---- 2 gloo processes: the collectives' values and the sharded evaluation --------------------------------
def _worker(rank: int, world_size: int, store: str, data: str, out: str, backend: str) -> None:
    torch.set_num_threads(1)
    device = torch.device("cuda", rank) if backend == "nccl" else CPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        info = DistInfo(True, rank, world_size, rank, device)
        found: dict = {
            "mean": collectives.mean_across([rank + 1.0] * (rank + 1), info),  # [1] and [2, 2]
            "gather": collectives.gather_1d(torch.arange(rank * 2 + 1, dtype=torch.float64) + 10 * rank, info),
            "any": (collectives.any_rank(rank == 1, info), collectives.any_rank(False, info)),
            "text": (collectives.broadcast_text("déjà vu" if rank == 0 else None, info),
                     collectives.broadcast_text(None, info)),
        }
        try:
            run_folder.on_main(info, lambda: (_ for _ in ()).throw(UserError("only rank 0 knows")))
        except UserError as err:
            found["on_main"] = str(err)
        sharded = Run(info, device, resolve_precision("off", device))
        test_sets = build_test_sets(["tid2013"], "lq_hq_ref", dataset_paths={"tid2013": f"{data}/TID2013"},
                                    patch_size=32, patch_num=2, seed=3, batch_size=3, repeats=2,
                                    ref_folder=f"{data}/refs", shard=(rank, world_size))
        net = tiny_net(4).to(device)
        found["batches"] = len(test_sets[0].loader)
        found["sharded"] = epoch.evaluate(net, test_sets, sharded, 1, "ref", trained_higher_is_better=True)
        if rank == 0:  # the same evaluation in one process, for comparison
            whole = build_test_sets(["tid2013"], "lq_hq_ref", dataset_paths={"tid2013": f"{data}/TID2013"},
                                    patch_size=32, patch_num=2, seed=3, batch_size=3, repeats=2,
                                    ref_folder=f"{data}/refs")
            single = Run(DistInfo(device=device), device, resolve_precision("off", device))
            found["single"] = epoch.evaluate(net, whole, single, 1, "ref", trained_higher_is_better=True)
        torch.save(found, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_two_processes(tmp_path: Path, backend: str) -> list[dict]:
    """Both ranks' findings from `_worker` (2 spawned processes)."""
    data = tmp_path / "data"
    make_tid2013(data / "TID2013", n_refs=2)
    make_ref_pool(data / "refs", n=2)
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(data), str(tmp_path), backend), nprocs=2)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def check_two_processes(found: list[dict], exact: bool = True) -> None:
    """What `_worker` must find: the collectives' values, and the sharded evaluation equal to one process's
    (number for number on the CPU; `exact=False`: within fp32 rounding, for two GPUs)."""
    for rank, f in enumerate(found):
        assert f["mean"] == pytest.approx(5 / 3)
        assert f["gather"].tolist() == [0.0, 10.0, 11.0, 12.0]  # lengths 1 and 3, in rank order
        assert f["any"] == (True, False)
        assert f["text"] == ("déjà vu", None)
        assert f["on_main"] == "only rank 0 knows"
        sharded, single = f["sharded"]["tid2013"], found[0]["single"]["tid2013"]
        assert np.array_equal(sharded["label"], single["label"])
        if not exact:
            np.testing.assert_allclose(sharded["pred"], single["pred"], rtol=1e-5, atol=1e-6)
            continue
        assert np.array_equal(sharded["pred"], single["pred"]), rank  # number for number
        assert len(single["pred"]) == single["images"] // 2 > 4  # per image (2 repeats each), several batches
        for key in ("srcc", "plcc", "krcc", "rmse"):
            assert sharded[key] == single[key], key
    samples = found[0]["single"]["tid2013"]["images"]
    assert found[0]["batches"] + found[1]["batches"] == -(-samples // 3)  # each batch once, none padded


def test_two_gloo_processes_collectives_and_sharded_evaluation(tmp_path):
    check_two_processes(run_two_processes(tmp_path, "gloo"))


# ---- --dist_timeout, the device made current, pinned memory ----------------------------------------------
def test_init_distributed_passes_the_timeout_and_makes_the_device_current(monkeypatch):
    calls: dict = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.update(kwargs))
    for name, value in {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    info, device = utils.init_distributed("cpu", timeout_minutes=90)
    assert calls == {"backend": "gloo", "timeout": timedelta(minutes=90)}
    assert (info.rank, info.world_size, info.local_world_size, info.device) == (1, 4, 2, CPU) and device == CPU
    # --gpu_ids 1 without torchrun: GPU 1 becomes the current device (nothing lands on GPU 0)
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    info, device = utils.init_distributed("1")
    assert device == torch.device("cuda", 1) == info.device and current == [device] and not info.distributed


def test_dist_timeout_option():
    from option_train_DistillationIQA_FR import set_args

    assert set_args([]).dist_timeout == 60.0
    with pytest.raises(UserError, match="--dist_timeout must be more than 0 minutes"):
        set_args(["--dist_timeout", "0"])


def test_memory_is_pinned_for_cuda_runs_only(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host, but a --gpu_ids cpu run
    make_tid2013(tmp_path / "TID2013", n_refs=2)
    run = Run(DistInfo(), CPU, resolve_precision("off", CPU))
    loader = build_train_loader("tid2013", "lq_hq", dataset_paths={"tid2013": tmp_path / "TID2013"}, patch_size=32,
                                patch_num=1, seed=0, batch_size=2, pin_memory=run.pin_memory)
    assert loader.pin_memory is False and build_loader(loader.dataset, 2, shuffle=False).pin_memory is False
    assert Run(DistInfo(), torch.device("cuda", 0), resolve_precision("off", CPU)).pin_memory is True


# ---- the reference cache: one share of the machine per local process, shared memory checked ---------------
def test_reference_cache_is_divided_among_local_processes(monkeypatch):
    monkeypatch.setattr(rc, "available_memory_bytes", lambda: 1000 * GB)
    monkeypatch.setattr(rc, "shared_memory_free_bytes", lambda: 64 * GB)
    explicit = rc.build_reference_cache(8.0, num_workers=2, local_processes=4)
    assert explicit.budget_bytes == 2 * GB and not explicit.limited_by_shm  # --ref_cache_gb: the machine's total
    automatic = rc.build_reference_cache(None, num_workers=2, local_processes=4)
    assert automatic.budget_bytes == 4 * GB  # min(16, a quarter of the memory) / 4
    monkeypatch.setattr(rc, "shared_memory_free_bytes", lambda: 8 * GB)
    capped = rc.build_reference_cache(None, num_workers=2, local_processes=4)
    assert capped.budget_bytes == GB and capped.limited_by_shm  # half of /dev/shm, shared by the 4 processes
    assert rc.build_reference_cache(8.0, num_workers=0, local_processes=4).budget_bytes == 2 * GB  # no shm


def test_shared_memory_shortage_is_one_line(monkeypatch):
    cache = rc.ReferenceCache(1.0, shared=True)
    monkeypatch.setattr(rc, "shared_memory_free_bytes", lambda: 100)  # another process took /dev/shm meanwhile
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(UserError, match=r"needs 0\.00 GB of shared memory but /dev/shm has 0\.00 GB free.*"
                                        r"--ref_cache_gb"):
        cache.add([rc.CacheEntry("a", image.shape, lambda: image)], label="refs")
    assert len(cache) == 0 and cache.used_bytes == 0


def test_sharded_batches_are_one_process_batches_dealt_out():
    from dataloaders import ShardedBatchSampler

    shares = [ShardedBatchSampler(7, 2, rank, 3) for rank in range(3)]
    for share in shares:
        share.set_epoch(5)
    assert [list(s) for s in shares] == [[[(0, 5), (1, 5)], [(6, 5)]], [[(2, 5), (3, 5)]], [[(4, 5), (5, 5)]]]
    assert [len(s) for s in shares] == [2, 1, 1]
    assert list(ShardedBatchSampler(0, 2, 1, 2)) == []  # an empty share: nothing, not a padded repeat
