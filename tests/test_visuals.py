"""The figure functions (tools/visuals.py) and the demo's precision decision (tools/demo.py, tools/utils.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tools import demo
from tools.utils import cpu_has_native_bf16
from tools.visuals import examples_figure, tsne_embedding, tsne_figure

XEON_NO_BF16 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni\n"
EPYC_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_AMX = "processor\t: 0\nflags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"


def test_examples_figure_grid_size(tmp_path):
    tile = np.zeros((24, 32, 3), np.uint8)
    path = tmp_path / "sub" / "examples.png"
    rows = [("blur", [(tile, "level 0\nscore 3.1"), (tile, "level 1\nscore 2.0"), (tile, "level 2\nscore 1.0")]),
            ("noise", [(tile, "level 0"), (tile, "level 1")])]  # a shorter row leaves an empty tile
    examples_figure(rows, path, title="t", tile_inches=1.6, dpi=50)
    with Image.open(path) as im:  # (1.6 * 3 columns + 0.4) x ((1.6 * 0.75 + 0.45) * 2 rows + 0.5) inches at 50 dpi
        assert im.size == (260, 190)
    assert not list(path.parent.glob(".*tmp*"))


def test_tsne_separates_clusters_and_draws_panels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([1.0, 5.0], 15)
    far = np.where(labels[:, None] == 1.0, 0.0, 20.0) + rng.normal(size=(30, 8))
    xy = tsne_embedding(far, seed=0)
    # every point's nearest neighbour in the map has its own label
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(30) * 1e9
    assert (labels[dist.argmin(1)] == labels).all()
    path = tmp_path / "tsne.png"
    tsne_figure({"w/o KD": rng.normal(size=(30, 8)), "w/ KD": far}, labels, path, label_name="level", dpi=50)
    with Image.open(path) as im:  # 2 panels: (4.2 * 2 + 0.4) x 4.8 inches (the legend in a row under them)
        assert im.size == (440, 240)


def test_tsne_figure_rejects_mismatched_sizes(tmp_path):
    from common.errors import UserError

    with pytest.raises(UserError, match="3 feature vectors for 4 labels"):
        tsne_figure({"a": np.zeros((3, 2))}, np.arange(4), tmp_path / "x.png")


@pytest.mark.parametrize("cpuinfo, native", [(XEON_NO_BF16, False), (EPYC_BF16, True), (SAPPHIRE_AMX, True),
                                             ("", False)])
def test_native_bf16_comes_from_cpu_flags(cpuinfo, native):
    assert cpu_has_native_bf16(cpuinfo) is native


def test_decide_bf16_needs_flags_and_a_measured_speedup():
    assert demo.decide_bf16(False, 1.0, 0.1)[0] is False  # emulated bf16: never, whatever was timed
    assert demo.decide_bf16(True, 1.0, 0.5)[0] is True  # 2x faster
    assert demo.decide_bf16(True, 1.0, 2.0)[0] is False  # slower
    assert demo.decide_bf16(True, 1.0, 0.9)[0] is False  # faster, but less than the margin
    assert demo.decide_bf16(True, None, None)[0] is False


def test_choose_precision_skips_timing_without_bf16_units(monkeypatch):
    import tools.utils

    monkeypatch.setattr(tools.utils, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(demo, "time_training_step", lambda *a, **k: pytest.fail("timed without bf16 units"))
    assert demo.choose_precision("auto")[0] == "off"
    monkeypatch.setattr(tools.utils, "cpu_has_native_bf16", lambda: True)
    timings = iter([2.0, 1.0])  # fp32, then bf16
    monkeypatch.setattr(demo, "time_training_step", lambda *a, **k: next(timings))
    assert demo.choose_precision("auto")[0] == "bf16"
    assert demo.choose_precision("off")[0] == "off"


def test_demo_output_folder_safety(tmp_path):
    from common.errors import UserError

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not made by the demo"):
        demo.prepare_output(foreign)
    out = tmp_path / "demo_output"
    demo.prepare_output(out)
    (out / "teacher").mkdir()
    (out / "teacher" / "old.pth").write_text("x")
    demo.prepare_output(out)  # a folder the demo made: its step folders are cleared
    assert not (out / "teacher").exists() and (out / "logs").is_dir()


def test_student_init_is_the_teachers_weights_without_the_role(tmp_path):
    """The students start from the teacher's weights; --studentNet_model_path refuses a teacher checkpoint, so the
    demo hands them a plain copy of its state dict."""
    import torch

    from common.errors import UserError
    from common.files import atomic_torch_save
    from tools.checkpoint import load_model_checkpoint

    state = {"lda1_process.0.weight": torch.ones(2, 3), "regressor.l2.bias": torch.zeros(1)}
    teacher = tmp_path / "last.pth"
    atomic_torch_save({"model": state, "role": "teacher", "epoch": 3}, teacher)
    with pytest.raises(UserError, match="teacher"):
        load_model_checkpoint(teacher, "--studentNet_model_path", "student")
    init = demo.write_student_init(teacher, tmp_path / "student_init.pth")
    loaded = load_model_checkpoint(init, "--studentNet_model_path", "student")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())
