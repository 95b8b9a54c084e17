"""Patch sampling: alignment, augmentation, independence of reference crops, reproducibility, image modes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataloaders as dl
from common.errors import UserError
from dataloaders.sampling import to_normalized_tensor
from tools.dataset_fixtures import make_kadid, make_koniq, make_ref_pool, pattern, write_image

S = 16  # patch size used below; fixture images are 64x48


def pixels(t: torch.Tensor) -> np.ndarray:
    """Dataset patches (uint8 [p, 3, s, s]) -> uint8 [p, s, s, 3]."""
    assert t.dtype == torch.uint8
    return t.permute(0, 2, 3, 1).numpy()


def orientation(patch: np.ndarray) -> tuple[int, int, int, int]:
    """(x step along columns, y step along rows, x at top-left, y at top-left) of a pattern patch."""
    r, g = patch[..., 0].astype(int), patch[..., 1].astype(int)
    return r[0, 1] - r[0, 0], g[1, 0] - g[0, 0], r[0, 0], g[0, 0]


@pytest.fixture(scope="module")
def kadid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kadid")
    make_kadid(root, n_refs=2, n_types=1, n_levels=2)
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_ref_pool(tmp_path_factory.mktemp("pool"), n=3, size=(96, 80))


def test_teacher_training_pairs_are_pixel_aligned_with_shared_flips(kadid: Path) -> None:
    ds = dl.build_dataset("kadid10k", kadid, "lq_hq", patch_size=S, patch_num=8, train=True, seed=1)
    seen = set()
    for index in range(len(ds)):
        item = ds[index]
        lq, hq = pixels(item["lq"]), pixels(item["hq"])
        assert lq.shape == hq.shape == (8, S, S, 3)
        np.testing.assert_array_equal(lq[..., :2], hq[..., :2])  # same location, same flips
        assert (lq[..., 2] != hq[..., 2]).all()  # but two different images
        for patch in lq:
            dx, dy, _, _ = orientation(patch)
            assert abs(dx) == 1 and abs(dy) == 1
            seen.add((dx, dy))
    assert seen == {(1, 1), (-1, 1), (1, -1), (-1, -1)}  # flips and 180-degree rotations happen


def test_teacher_test_patches_are_plain_crops(kadid: Path) -> None:
    ds = dl.build_dataset("kadid10k", kadid, "lq_hq", patch_size=S, patch_num=6, train=False)
    lq = pixels(ds[0]["lq"])
    full = pattern((64, 48))
    for patch in lq:
        dx, dy, x0, y0 = orientation(patch)
        assert (dx, dy) == (1, 1)
        np.testing.assert_array_equal(patch[..., :2], full[y0:y0 + S, x0:x0 + S, :2])


def test_student_pairs_unflipped_and_reference_crops_independent(kadid: Path, pool: list[Path]) -> None:
    ds = dl.build_dataset("kadid10k", kadid, "lq_hq_ref", patch_size=S, patch_num=8, ref_paths=pool)
    item = ds[0]
    lq, hq, ref = pixels(item["lq"]), pixels(item["hq"]), pixels(item["ref"])
    np.testing.assert_array_equal(lq[..., :2], hq[..., :2])
    lq_origins = [orientation(p)[2:] for p in lq]
    ref_origins = [orientation(p)[2:] for p in ref]
    assert all(orientation(p)[:2] == (1, 1) for p in np.concatenate([lq, ref]))
    assert ref_origins != lq_origins and len(set(ref_origins)) > 1
    assert len({int(b) for b in ref[..., 2].ravel()}) == 1  # one reference image per sample
    assert int(ref[0, 0, 0, 2]) in (200, 201, 202)


def test_student_training_flips_and_rotates_only_the_reference(kadid: Path, pool: list[Path]) -> None:
    ds = dl.build_dataset("kadid10k", kadid, "lq_hq_ref", patch_size=S, patch_num=8, train=True,
                          ref_paths=pool)
    black_corners = 0
    for index in range(len(ds)):
        item = ds[index]
        lq, ref = pixels(item["lq"]), pixels(item["ref"])
        assert all(orientation(p)[:2] == (1, 1) for p in lq)
        black_corners += sum(int((p[0, 0] == 0).all() or (p[-1, -1] == 0).all()) for p in ref)
    assert black_corners > 0  # rotated patches have empty corners


def test_reference_drawn_from_whole_pool(kadid: Path, pool: list[Path]) -> None:
    ds = dl.build_dataset("kadid10k", kadid, "lq_hq_ref", patch_size=S, patch_num=1, ref_paths=pool,
                          repeats=10)
    drawn = {int(pixels(ds[i]["ref"])[0, S // 2, S // 2, 2]) for i in range(len(ds))}
    assert drawn == {200, 201, 202}


def test_authentic_patches_are_independent_crops(tmp_path: Path, pool: list[Path]) -> None:
    make_koniq(tmp_path, n=1, size=(64, 48))
    ds = dl.build_dataset("koniq-10k", tmp_path, "lq", patch_size=S, patch_num=8)
    assert len({orientation(p)[2:] for p in pixels(ds[0]["lq"])}) > 1


def test_seed_epoch_and_index_fix_the_sample(kadid: Path, pool: list[Path]) -> None:
    def build(seed: int) -> dl.IQADataset:
        return dl.build_dataset("kadid10k", kadid, "lq_hq_ref", patch_size=S, patch_num=4, train=True,
                                ref_paths=pool, seed=seed)

    a, b, c = build(5), build(5), build(6)
    for key in ((1, 0), (1, 3)):
        for k in ("lq", "hq", "ref"):
            assert torch.equal(a[key][k], b[key][k])
    assert torch.equal(a[1]["lq"], a[(1, 0)]["lq"])
    assert not torch.equal(a[1]["lq"], c[1]["lq"])
    assert not torch.equal(a[(1, 0)]["lq"], a[(1, 1)]["lq"])
    assert a[(1, 2)]["index"] == 1 and a[1]["label"].item() == pytest.approx(a.samples[1].label)


def _batches(loader: torch.utils.data.DataLoader, epochs: int) -> list[tuple[list[int], torch.Tensor]]:
    out = []
    for epoch in range(epochs):
        dl.set_loader_epoch(loader, epoch)
        out += [(batch["index"].tolist(), batch["lq"]) for batch in loader]
    return out


def test_loader_batches_same_with_and_without_workers(kadid: Path) -> None:
    ds = dl.build_dataset("kadid10k", kadid, "lq_hq", patch_size=S, patch_num=2, train=True, seed=3)
    plain = _batches(dl.build_loader(ds, 2, shuffle=True, seed=3), epochs=2)
    again = _batches(dl.build_loader(ds, 2, shuffle=True, seed=3), epochs=2)
    workers = dl.build_loader(ds, 2, shuffle=True, seed=3, num_workers=2)
    assert workers.persistent_workers and workers.sampler.num_replicas == 1
    with_workers = _batches(workers, epochs=2)
    for (i1, x1), (i2, x2), (i3, x3) in zip(plain, again, with_workers, strict=True):
        assert i1 == i2 == i3
        assert torch.equal(x1, x2) and torch.equal(x1, x3)
    orders = [sum((i for i, _ in plain[k * 2:(k + 1) * 2]), []) for k in range(2)]
    assert sorted(orders[0]) == sorted(orders[1]) == [0, 1, 2, 3]
    other = _batches(dl.build_loader(ds, 2, shuffle=True, seed=4), epochs=1)
    assert [i for i, _ in other] != [i for i, _ in plain[:2]] or not torch.equal(other[0][1], plain[0][1])


def test_eval_loader_keeps_order_and_sampler_shards(kadid: Path) -> None:
    ds = dl.build_dataset("kadid10k", kadid, "lq", patch_size=S, patch_num=1)
    loader = dl.build_loader(ds, 3, shuffle=False)
    assert [b["index"].tolist() for b in loader] == [[0, 1, 2], [3]]
    shards = [list(dl.EpochSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in (0, 1)]
    assert sorted(i for shard in shards for i, _ in shard) == [0, 1, 2, 3]
    assert all(epoch == 0 for shard in shards for _, epoch in shard)


# ---- image modes and sizes --------------------------------------------------------------------------------


def _save_mode(path: Path, mode: str) -> None:
    rgb = Image.fromarray(pattern((40, 30), variant=77))
    if mode == "I;16":
        Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(path)
    elif mode == "P":
        rgb.quantize(16).save(path)
    else:
        rgb.convert(mode).save(path)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "1", "CMYK"])
def test_any_image_mode_becomes_8bit_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    _save_mode(path, mode)
    img = dl.load_rgb(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    if mode in ("L", "I;16"):  # 16-bit values scaled, not clipped
        grey = np.asarray(Image.fromarray(pattern((40, 30), variant=77)).convert("L"))
        np.testing.assert_array_equal(np.asarray(img)[..., 0], grey)
    ds = dl.build_dataset("koniq-10k", _koniq_with(tmp_path / "k", path), "lq_hq_ref", patch_size=S,
                          patch_num=2, ref_paths=[path])
    item = ds[0]
    assert item["lq"].shape == item["ref"].shape == (2, 3, S, S)


def test_16bit_rgb_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = (np.arange(6 * 8 * 3).reshape(6, 8, 3) * 1000 % 65536).astype(np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "rgb16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 6, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = np.asarray(dl.load_rgb(path)).astype(int)
    assert np.abs(out - values / 257.0).max() <= 1.0


def _koniq_with(root: Path, image: Path) -> Path:
    make_koniq(root, n=1)
    target = next((root / "1024x768").iterdir())
    target.write_bytes(image.read_bytes())  # PIL reads by content, not by extension
    return root


def test_load_rgb_names_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"image not found: {tmp_path / 'x.png'}"):
        dl.load_rgb(tmp_path / "x.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        dl.load_rgb(bad)
    truncated = write_image(tmp_path / "t.png", (64, 48))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    make_koniq(tmp_path / "k", n=1)
    next((tmp_path / "k/1024x768").iterdir()).write_bytes(truncated.read_bytes())
    ds = dl.build_dataset("koniq-10k", tmp_path / "k", "lq", patch_size=S)
    with pytest.raises(UserError, match="cannot read image .*1024x768"):
        ds[0]


def test_small_image_is_an_error_unless_upscaled(tmp_path: Path, pool: list[Path]) -> None:
    make_kadid(tmp_path, n_refs=1, n_types=1, n_levels=1, size=(64, 48))
    ds = dl.build_dataset("kadid10k", tmp_path, "lq_hq", patch_size=56)
    with pytest.raises(UserError, match=r"image .*I01_01_01.png is 64x48, smaller than the patch size 56"):
        ds[0]
    up = dl.build_dataset("kadid10k", tmp_path, "lq_hq", patch_size=56, patch_num=2, upscale=True)
    item = up[0]
    assert item["lq"].shape == item["hq"].shape == (2, 3, 56, 56)
    ref_small = dl.build_dataset("kadid10k", tmp_path, "lq_hq_ref", patch_size=90, upscale=False,
                                 ref_paths=pool)
    with pytest.raises(UserError, match="is 64x48, smaller than the patch size 90"):
        ref_small[0]


def test_misaligned_pair_sizes_are_named(tmp_path: Path) -> None:
    make_kadid(tmp_path, n_refs=1, n_types=1, n_levels=1)
    write_image(tmp_path / "images/I01.png", (60, 48))
    ds = dl.build_dataset("kadid10k", tmp_path, "lq_hq", patch_size=S)
    with pytest.raises(UserError, match=r"01_01.png \(64x48\) and its reference .*I01.png \(60x48\) differ"):
        ds[0]


def test_normalisation_uses_imagenet_constants_in_rgb_order() -> None:
    """One known pixel, by hand: (x / 255 - mean) / std with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)."""
    patch = np.zeros((1, 2, 2, 3), np.uint8)
    patch[0, 0, 1] = (255, 0, 128)  # R, G, B at row 0, column 1
    out = to_normalized_tensor(patch)
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert expected == pytest.approx([2.2489083, -2.0357143, 0.4264924], abs=1e-6)  # the numbers themselves
    np.testing.assert_allclose(out[0, :, 0, 1].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6)
