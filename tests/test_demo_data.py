"""Property tests for tools/demo_data.py: KADID-10k / TID2013 / DIV2K layout, split, labels, distortions."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tools.demo_data as demo
from common.errors import UserError
from tools.demo_data import (
    DISTORTIONS,
    KADID_TYPE_IDS,
    LABEL_RULE,
    SEVERITY,
    TID_TYPE_IDS,
    build_demo_dataset,
    main,
)

SIZE = (64, 48)
LEVELS = 5

KADID_NAME = re.compile(r"^I(\d\d)_(\d\d)_(\d\d)\.png$")
TID_NAME = re.compile(r"^i(\d\d)_(\d\d)_(\d)\.bmp$")
KADID_TYPE_NAMES = {v: k for k, v in KADID_TYPE_IDS.items()}
TID_TYPE_NAMES = {v: k for k, v in TID_TYPE_IDS.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    summary = build_demo_dataset(out, size=SIZE, seed=0, levels=LEVELS)
    return out, summary


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im, dtype=np.float64)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _kadid_rows(out: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(out / "kadid10k" / "dmos.csv", newline="") as f:
        header = f.readline().strip().split(",")
        f.seek(0)
        return header, list(csv.DictReader(f))


def _tid_rows(out: Path) -> list[tuple[float, str]]:
    lines = (out / "TID2013" / "mos_with_names.txt").read_text().splitlines()
    rows = []
    for line in lines:
        fields = line.split(" ")
        assert len(fields) == 2, line
        rows.append((float(fields[0]), fields[1]))
    return rows


def _without_reused(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "reused"}


def _expected_label(distortion: str, level: int, lo: float, hi: float) -> float:
    u = 1.0 - SEVERITY[distortion] * level / LEVELS
    return lo + (hi - lo) * u


# --------------------------------------------------------------------------------------------------- layout


def test_top_level_layout(built: tuple[Path, dict]) -> None:
    out, summary = built
    assert (out / "kadid10k" / "images").is_dir()
    assert (out / "kadid10k" / "dmos.csv").is_file()
    for sub in ("reference_images", "distorted_images"):
        assert (out / "TID2013" / sub).is_dir()
    for name in ("mos_with_names.txt", "mos.txt", "mos_std.txt"):
        assert (out / "TID2013" / name).is_file()
    assert (out / "DIV2K_ref" / "train_HR").is_dir() and (out / "DIV2K_ref" / "val_HR").is_dir()
    assert (out / demo.MANIFEST_NAME).is_file()
    assert not (out / demo.INCOMPLETE_MARKER).exists()
    assert summary["label_rule"] == LABEL_RULE
    assert summary["distortions"] == list(DISTORTIONS)
    assert len(DISTORTIONS) >= 7
    assert {"gaussian_blur", "white_noise", "jpeg", "contrast_decrease", "pixelate"} <= set(DISTORTIONS)


def test_kadid_format(built: tuple[Path, dict]) -> None:
    out, summary = built
    header, rows = _kadid_rows(out)
    assert header == ["dist_img", "ref_img", "dmos", "var"]
    names = [r["dist_img"] for r in rows]
    assert names == sorted(names), "KADID rows are sorted by dist_img"
    n_ref = len(summary["train_contents"])
    assert len(rows) == summary["kadid_images"] == n_ref * len(DISTORTIONS) * LEVELS
    seen = set()
    images = out / "kadid10k" / "images"
    for r in rows:
        m = KADID_NAME.match(r["dist_img"])
        assert m, r["dist_img"]
        ref, typ, lvl = (int(g) for g in m.groups())
        assert r["ref_img"] == r["dist_img"][:3] + ".png" == f"I{ref:02d}.png"
        assert typ in KADID_TYPE_NAMES and 1 <= lvl <= LEVELS
        assert (images / r["dist_img"]).is_file() and (images / r["ref_img"]).is_file()
        float(r["var"])
        seen.add((ref, typ, lvl))
    assert seen == set(itertools.product(range(1, n_ref + 1), KADID_TYPE_NAMES, range(1, LEVELS + 1)))
    # images/ holds exactly the references and the listed distorted images
    on_disk = {p.name for p in images.iterdir()}
    assert on_disk == set(names) | {f"I{i:02d}.png" for i in range(1, n_ref + 1)}


def test_tid2013_format(built: tuple[Path, dict]) -> None:
    out, summary = built
    rows = _tid_rows(out)
    n_ref = len(summary["test_contents"])
    assert len(rows) == summary["tid_images"] == n_ref * len(DISTORTIONS) * LEVELS
    keys = []
    for _, name in rows:
        m = TID_NAME.match(name)
        assert m, name
        ref, typ, lvl = (int(g) for g in m.groups())
        assert typ in TID_TYPE_NAMES and 1 <= lvl <= LEVELS
        assert (out / "TID2013" / "distorted_images" / name).is_file()
        # CVRKD's aligned reference: reference_images/I<chars 1-2 of the name>.BMP
        assert (out / "TID2013" / "reference_images" / f"I{name[1:3]}.BMP").is_file()
        keys.append((ref, typ, lvl))
    assert keys == sorted(keys), "ordered by reference, then type, then level"
    assert len(set(keys)) == len(keys)
    refs = sorted(p.name for p in (out / "TID2013" / "reference_images").iterdir())
    assert refs == [f"I{i:02d}.BMP" for i in range(1, n_ref + 1)]
    assert {p.name for p in (out / "TID2013" / "distorted_images").iterdir()} == {n for _, n in rows}
    mos_only = (out / "TID2013" / "mos.txt").read_text().split()
    assert [float(v) for v in mos_only] == [m for m, _ in rows]
    assert len((out / "TID2013" / "mos_std.txt").read_text().split()) == len(rows)


def test_image_sizes_and_pools(built: tuple[Path, dict]) -> None:
    out, summary = built
    for p in list((out / "kadid10k" / "images").iterdir()) + list((out / "TID2013").rglob("*.[bB][mM][pP]")):
        with Image.open(p) as im:
            assert im.size == SIZE and im.mode == "RGB", p
    train_hr = sorted(p.name for p in (out / "DIV2K_ref" / "train_HR").iterdir())
    val_hr = sorted(p.name for p in (out / "DIV2K_ref" / "val_HR").iterdir())
    assert train_hr == [f"{i:04d}.png" for i in range(1, len(summary["ref_train"]) + 1)]
    assert val_hr == [f"{i:04d}.png" for i in range(801, 801 + len(summary["ref_test"]))]
    for p in (out / "DIV2K_ref").rglob("*.png"):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert im.width >= SIZE[0] and im.height >= SIZE[1]


# ---------------------------------------------------------------------------------------------------- split


def test_split_is_disjoint(built: tuple[Path, dict]) -> None:
    out, summary = built
    groups = ["train_contents", "test_contents", "ref_train", "ref_test"]
    assert len(summary["train_contents"]) >= 4 and len(summary["test_contents"]) >= 2
    # many references, so that the student cannot lean on which one it drew
    assert len(summary["ref_train"]) >= 20 and len(summary["ref_test"]) >= 10
    for a, b in itertools.combinations(groups, 2):
        assert not set(summary[a]) & set(summary[b]), (a, b)
    photos = summary["photos"]
    for other in ("train", "ref_train", "ref_test"):  # the held-out photos appear nowhere else
        assert not set(photos["test"]) & set(photos[other]), f"held-out photo in {other}"
    assert set(photos["ref_train"]) == set(photos["ref_test"]) >= set(photos["train"])

    # No reference image of one set looks like one of another (compared as small thumbnails).
    def thumbs(paths: list[Path]) -> list[np.ndarray]:
        result = []
        for p in paths:
            with Image.open(p) as im:
                small = im.convert("RGB").resize((16, 12), Image.Resampling.BOX)
                result.append(np.asarray(small, dtype=float))
        return result

    sets = {
        "train": thumbs(sorted((out / "kadid10k" / "images").glob("I??.png"))),
        "test": thumbs(sorted((out / "TID2013" / "reference_images").iterdir())),
        "ref_train": thumbs(sorted((out / "DIV2K_ref" / "train_HR").iterdir())),
        "ref_test": thumbs(sorted((out / "DIV2K_ref" / "val_HR").iterdir())),
    }
    assert len(sets["train"]) == len(summary["train_contents"])
    # The held-out images look like nothing else, and the two pools hold different views (the testing pool may
    # show a training photo whole: it is not held-out content).
    for a, b in (("test", "train"), ("test", "ref_train"), ("test", "ref_test"), ("ref_train", "ref_test")):
        for x, y in itertools.product(sets[a], sets[b]):
            assert np.abs(x - y).mean() > 5.0, f"near-identical references in {a} and {b}"


# --------------------------------------------------------------------------------------------------- labels


def test_kadid_labels_follow_rule(built: tuple[Path, dict]) -> None:
    out, _ = built
    _, rows = _kadid_rows(out)
    series: dict[tuple[int, int], dict[int, float]] = {}
    for r in rows:
        ref, typ, lvl = (int(g) for g in KADID_NAME.match(r["dist_img"]).groups())
        score = float(r["dmos"])
        assert 1.0 <= score <= 5.0
        assert score == pytest.approx(_expected_label(KADID_TYPE_NAMES[typ], lvl, 1.0, 5.0), abs=0.006)
        series.setdefault((ref, typ), {})[lvl] = score
    for scores in series.values():
        values = [scores[lv] for lv in range(1, LEVELS + 1)]
        assert all(a > b for a, b in itertools.pairwise(values)), values


def test_tid_labels_follow_rule(built: tuple[Path, dict]) -> None:
    out, _ = built
    series: dict[tuple[int, int], dict[int, float]] = {}
    for mos, name in _tid_rows(out):
        ref, typ, lvl = (int(g) for g in TID_NAME.match(name).groups())
        assert 0.0 <= mos <= 9.0
        assert mos == pytest.approx(_expected_label(TID_TYPE_NAMES[typ], lvl, 0.0, 9.0), abs=1e-4)
        series.setdefault((ref, typ), {})[lvl] = mos
    for scores in series.values():
        values = [scores[lv] for lv in range(1, LEVELS + 1)]
        assert all(a > b for a, b in itertools.pairwise(values)), values


def test_same_distortion_same_label_in_both_datasets(built: tuple[Path, dict]) -> None:
    out, _ = built
    _, rows = _kadid_rows(out)
    kadid = {}
    for r in rows:
        _, typ, lvl = (int(g) for g in KADID_NAME.match(r["dist_img"]).groups())
        kadid[(KADID_TYPE_NAMES[typ], lvl)] = (float(r["dmos"]) - 1.0) / 4.0
    for mos, name in _tid_rows(out):
        _, typ, lvl = (int(g) for g in TID_NAME.match(name).groups())
        assert mos / 9.0 == pytest.approx(kadid[(TID_TYPE_NAMES[typ], lvl)], abs=0.002)


# ---------------------------------------------------------------------------------------------- distortions


def _series(out: Path) -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """(distortion, reference, [level 1..LEVELS images]) for every content of both datasets."""
    result = []
    kadid = out / "kadid10k" / "images"
    for ref_path in sorted(kadid.glob("I??.png")):
        ref = _load(ref_path)
        for typ, name in KADID_TYPE_NAMES.items():
            imgs = [_load(kadid / f"{ref_path.stem}_{typ:02d}_{lv:02d}.png") for lv in range(1, LEVELS + 1)]
            result.append((name, ref, imgs))
    tid = out / "TID2013"
    for ref_path in sorted((tid / "reference_images").iterdir()):
        ref = _load(ref_path)
        for typ, name in TID_TYPE_NAMES.items():
            imgs = [
                _load(tid / "distorted_images" / f"i{ref_path.stem[1:]}_{typ:02d}_{lv}.bmp")
                for lv in range(1, LEVELS + 1)
            ]
            result.append((name, ref, imgs))
    return result


def _increasing(values: list[float]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


def _grad_energy(img: np.ndarray) -> float:
    y = img.mean(axis=2)
    return float((np.diff(y, axis=0) ** 2).mean() + (np.diff(y, axis=1) ** 2).mean())


def _chroma(img: np.ndarray) -> float:
    return float(np.abs(img - img.mean(axis=2, keepdims=True)).mean())


def test_deviation_grows_with_level(built: tuple[Path, dict]) -> None:
    out, _ = built
    for name, ref, imgs in _series(out):
        mse = [float(((img - ref) ** 2).mean()) for img in imgs]
        assert mse[0] > 0.0, name
        assert _increasing(mse), (name, mse)
        if name == "gaussian_blur":  # loses high frequencies
            energy = [_grad_energy(ref)] + [_grad_energy(img) for img in imgs]
            assert _increasing([-e for e in energy]), (name, energy)
        if name == "contrast_decrease":  # shrinking luminance spread
            spread = [float(ref.mean(axis=2).std())] + [float(img.mean(axis=2).std()) for img in imgs]
            assert _increasing([-s for s in spread]), (name, spread)
        if name == "colour_saturation":  # shrinking chroma, grey at the last level
            chroma = [_chroma(ref)] + [_chroma(img) for img in imgs]
            assert _increasing([-c for c in chroma]), (name, chroma)


def test_distortion_functions_contract() -> None:
    rng = np.random.default_rng(1)
    img = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    for name, fn in DISTORTIONS.items():
        for level in (1, 3, 5):
            out = fn(img, level, np.random.default_rng(0))
            assert out.shape == img.shape and out.dtype == np.uint8, name
        same = fn(img, 2, np.random.default_rng(7))
        assert np.array_equal(same, fn(img, 2, np.random.default_rng(7))), name
        with pytest.raises(UserError):
            fn(img, 6, np.random.default_rng(0))
        with pytest.raises(UserError):
            fn(img, 0, np.random.default_rng(0))


# --------------------------------------------------------------------------------------- determinism, reuse


def test_same_seed_identical_bytes(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, summary = built
    again = build_demo_dataset(tmp_path / "again", size=SIZE, seed=0, levels=LEVELS)
    assert again["reused"] is False
    assert _without_reused(again) == _without_reused(summary)
    assert _all_files(tmp_path / "again") == _all_files(out)


def test_other_seed_changes_only_random_distortions(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    other = tmp_path / "other"
    build_demo_dataset(other, size=SIZE, seed=1, levels=LEVELS)
    noise = f"_{KADID_TYPE_IDS['white_noise']:02d}_"
    blur = f"_{KADID_TYPE_IDS['gaussian_blur']:02d}_"
    a, b = out / "kadid10k" / "images", other / "kadid10k" / "images"
    assert (a / f"I01{noise}03.png").read_bytes() != (b / f"I01{noise}03.png").read_bytes()
    assert (a / f"I01{blur}03.png").read_bytes() == (b / f"I01{blur}03.png").read_bytes()
    assert (a / "I01.png").read_bytes() == (b / "I01.png").read_bytes()


def test_rebuild_is_noop(built: tuple[Path, dict]) -> None:
    out, summary = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = build_demo_dataset(out, size=SIZE, seed=0, levels=LEVELS)
    assert again["reused"] is True
    assert _without_reused(again) == _without_reused(summary)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_interrupted_build_is_not_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    real_encode = demo._encode
    calls = {"n": 0}

    def failing_encode(img: np.ndarray, fmt: str) -> bytes:
        calls["n"] += 1
        if calls["n"] > 40:
            raise KeyboardInterrupt
        return real_encode(img, fmt)

    monkeypatch.setattr(demo, "_encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        build_demo_dataset(out, size=SIZE)
    monkeypatch.setattr(demo, "_encode", real_encode)
    assert not (out / demo.MANIFEST_NAME).exists()
    assert (out / demo.INCOMPLETE_MARKER).exists()
    result = build_demo_dataset(out, size=SIZE)
    assert result["reused"] is False
    assert (out / demo.MANIFEST_NAME).exists() and not (out / demo.INCOMPLETE_MARKER).exists()


def test_damaged_build_is_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "data"
    build_demo_dataset(out, size=SIZE)
    victim = out / "kadid10k" / "images" / "I01.png"
    victim.write_bytes(victim.read_bytes()[:50])
    assert build_demo_dataset(out, size=SIZE)["reused"] is False
    with Image.open(victim) as im:
        assert im.size == SIZE


def test_other_parameters_need_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    first = build_demo_dataset(out, size=SIZE, levels=3)
    assert len(_kadid_rows(out)[1]) == len(first["train_contents"]) * len(DISTORTIONS) * 3
    with pytest.raises(UserError, match="overwrite"):
        build_demo_dataset(out, size=SIZE, levels=LEVELS)
    result = build_demo_dataset(out, size=SIZE, levels=LEVELS, overwrite=True)
    assert result["reused"] is False
    _, rows = _kadid_rows(out)
    assert len(rows) == result["kadid_images"] == len(result["train_contents"]) * len(DISTORTIONS) * LEVELS
    # no stale files from the 3-level build
    assert len(list((out / "kadid10k" / "images").iterdir())) == len(rows) + len(result["train_contents"])


def test_foreign_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not empty"):
            build_demo_dataset(out, size=SIZE, overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


@pytest.mark.parametrize("size", [(8, 8), (64,), "64x48", (0, 48)])
def test_bad_size_is_user_error(tmp_path: Path, size: object) -> None:
    with pytest.raises(UserError):
        build_demo_dataset(tmp_path / "x", size=size)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_main_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out", str(tmp_path / "cli"), "--size", "48x36", "--seed", "3"])
    text = capsys.readouterr().out
    assert "kadid10k" in text and "TID2013" in text and "DIV2K_ref" in text
    with Image.open(tmp_path / "cli" / "kadid10k" / "images" / "I01.png") as im:
        assert im.size == (48, 36)
    main(["--out", str(tmp_path / "cli"), "--size", "48x36", "--seed", "3"])
    assert "reused" in capsys.readouterr().out
    with pytest.raises(UserError):
        main(["--out", str(tmp_path / "cli2"), "--size", "big"])
