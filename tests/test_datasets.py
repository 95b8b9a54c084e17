"""Dataset readers: counts, labels, content mapping and clear errors on broken copies of every format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

import dataloaders as dl
from common.errors import UserError
from dataloaders.xlsx import column_index, read_xlsx_rows
from tools.dataset_fixtures import (
    MAKERS,
    make_bid,
    make_csiq,
    make_kadid,
    make_koniq,
    make_live,
    make_livec,
    make_tid2013,
    write_image,
    write_xlsx,
)

SYNTHETIC = ("kadid10k", "live", "csiq", "tid2013", "pipal")
AUTHENTIC = ("koniq-10k", "livec", "bid")
HIGHER_IS_BETTER = {"kadid10k": True, "live": False, "csiq": False, "tid2013": True, "pipal": True,
                    "koniq-10k": True, "livec": True, "bid": True}
LABEL_FILES = {"kadid10k": "dmos.csv", "live": "dmos_realigned.mat", "csiq": "csiq_label.txt",
               "tid2013": "mos_with_names.txt", "pipal": "Train_Label", "koniq-10k":
               "koniq10k_scores_and_distributions.csv", "livec": "Data/AllMOS_release.mat",
               "bid": "DatabaseGrades.xlsx"}


def _relative(ds: dl.IQADataset) -> list[tuple[str, str | None, float]]:
    def rel(path: Path | None) -> str | None:
        return path.relative_to(ds.root).as_posix() if path is not None else None

    return [(rel(s.lq_path), rel(s.hq_path), s.label) for s in ds.samples]


def test_names_and_defaults() -> None:
    assert dl.DATASET_NAMES == ("kadid10k", "live", "csiq", "tid2013", "koniq-10k", "livec", "bid", "pipal")
    assert dl.DEFAULT_DIRS["live"] == "LIVE" and dl.DEFAULT_DIRS["ref_test"] == "DIV2K_ref/val_HR"
    for name in dl.DATASET_NAMES:
        cls = dl.dataset_class(name)
        assert cls.name == name
        assert cls.higher_is_better is HIGHER_IS_BETTER[name]
        assert cls.has_aligned_reference is (name in SYNTHETIC)
    with pytest.raises(UserError, match="unknown dataset 'kadid'.*kadid10k, live, csiq"):
        dl.dataset_class("kadid")


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_every_format_reads_paths_labels_and_references(tmp_path: Path, name: str) -> None:
    entries = MAKERS[name](tmp_path / name)
    ds = dl.build_dataset(name, tmp_path / name, "lq", patch_size=16, patch_num=2)
    assert _relative(ds) == [(e.lq, e.hq, e.label) for e in entries]
    contents = sorted({e.content for e in entries})
    assert ds.num_contents == len(contents)
    assert [s.content_id for s in ds.samples] == [contents.index(e.content) for e in entries]
    item = ds[0]
    assert item["lq"].shape == (2, 3, 16, 16) and "hq" not in item and "ref" not in item
    assert item["label"].dtype == torch.float32 and item["label"].item() == pytest.approx(entries[0].label)


def test_kadid_contents_are_reference_images(tmp_path: Path) -> None:
    make_kadid(tmp_path, n_refs=3, n_types=2, n_levels=2)
    ds = dl.build_dataset("kadid10k", tmp_path, "lq_hq", content_ids=[1], patch_size=16)
    assert ds.num_contents == 3 and len(ds) == 4
    assert {s.hq_path.name for s in ds.samples} == {"I02.png"}
    assert all(s.lq_path.name.startswith("I02_") for s in ds.samples)
    with pytest.raises(UserError, match=r"content ids \[3\] out of range 0..2"):
        dl.build_dataset("kadid10k", tmp_path, "lq", content_ids=[3])


def test_live_full_release_keeps_779_images(tmp_path: Path) -> None:
    make_live(tmp_path, size=(8, 8), n_refs=29, full=True)
    ds = dl.build_dataset("live", tmp_path, "lq_hq", patch_size=8, patch_num=1)
    assert len(ds) == 779 and ds.num_contents == 29
    per_folder = {f: sum(s.lq_path.parent.name == f for s in ds.samples)
                  for f in ("jp2k", "jpeg", "wn", "gblur", "fastfading")}
    assert per_folder == {"jp2k": 169, "jpeg": 175, "wn": 145, "gblur": 145, "fastfading": 145}
    assert not any(s.lq_path.parent.name == "wn" and s.lq_path.name == "img146.bmp" for s in ds.samples)
    labels = [s.label for s in ds.samples]
    assert min(labels) == -2.5  # realigned DMOS can leave [0, 100]


def test_live_drops_orgs_copies_and_reads_both_namings(tmp_path: Path) -> None:
    entries = make_live(tmp_path / "a")
    assert (tmp_path / "a/jp2k/img1.bmp").is_file()  # a flagged copy on disk
    ds = dl.build_dataset("live", tmp_path / "a", "lq")
    assert len(ds) == 10 and "jp2k/img1.bmp" not in [e for e, _, _ in _relative(ds)]
    assert ds.samples[0].lq_path.name == "img2.bmp" and ds.samples[0].label == entries[0].label
    make_live(tmp_path / "b", zero_padded=True)
    padded = dl.build_dataset("live", tmp_path / "b", "lq")
    assert [s.lq_path.name for s in padded.samples[:2]] == ["002.bmp", "005.bmp"]
    assert [s.label for s in padded.samples] == [s.label for s in ds.samples]
    # the content index follows the sorted reference names
    contents = {s.hq_path.name: s.content_id for s in ds.samples}
    assert contents == {"bikes.bmp": 0, "caps.bmp": 1, "parrots.bmp": 2}


def test_csiq_flat_and_per_type_folders_agree(tmp_path: Path) -> None:
    make_csiq(tmp_path / "flat", flat=True)
    make_csiq(tmp_path / "sub", flat=False)
    flat = dl.build_dataset("csiq", tmp_path / "flat", "lq_hq", patch_size=16)
    sub = dl.build_dataset("csiq", tmp_path / "sub", "lq_hq", patch_size=16)
    assert [(s.label, s.content_id, s.lq_path.name) for s in flat.samples] == \
        [(s.label, s.content_id, s.lq_path.name) for s in sub.samples]
    assert {s.lq_path.parent.name for s in sub.samples} == {"awgn", "jpeg", "BLUR"}
    by_name = {s.lq_path.name: s.hq_path.name for s in flat.samples}
    assert by_name["aerial_city.JPEG.2.png"] == "aerial_city.png"


def test_tid2013_resolves_names_ignoring_case(tmp_path: Path) -> None:
    make_tid2013(tmp_path, n_refs=3)
    ds = dl.build_dataset("tid2013", tmp_path, "lq_hq", patch_size=16)
    names = {s.lq_path.name for s in ds.samples}
    assert {"I01_01_1.bmp", "I01_11_1.BMP", "I25_13_1.BMP", "i25_13_2.bmp"} <= names
    refs = {s.content_id: s.hq_path.name for s in ds.samples}
    assert refs == {0: "I01.BMP", 1: "I02.BMP", 2: "i25.bmp"}
    assert all(s.lq_path.is_file() and s.hq_path.is_file() for s in ds.samples)


def test_livec_skips_the_seven_training_images(tmp_path: Path) -> None:
    entries = make_livec(tmp_path, n=5)
    ds = dl.build_dataset("livec", tmp_path, "lq")
    assert len(ds) == 5 and not any(s.lq_path.name.startswith("t") for s in ds.samples)
    assert [s.label for s in ds.samples] == [e.label for e in entries]
    assert {s.lq_path.suffix for s in ds.samples} == {".bmp", ".JPG"}


def test_livec_nested_release_folder(tmp_path: Path) -> None:
    make_livec(tmp_path / "ChallengeDB_release", n=2)
    assert len(dl.build_dataset("livec", tmp_path, "lq")) == 2


def test_bid_reads_xlsx_and_resizes_to_512(tmp_path: Path) -> None:
    entries = make_bid(tmp_path, n=3, size=(40, 30))
    ds = dl.build_dataset("bid", tmp_path, "lq", patch_size=224, patch_num=1)
    assert [s.label for s in ds.samples] == [e.label for e in entries] == [1.4, 2.3, 3.2]
    assert ds[2]["lq"].shape == (1, 3, 224, 224)  # 40x30 fits a 224 patch only after the 512x512 resize


def test_koniq_github_metadata_variant(tmp_path: Path) -> None:
    write_image(tmp_path / "1024x768" / "1.jpg")
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata/koniq10k_distributions_sets.csv").write_text(
        "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n1.jpg,0.1,0.2,0.3,0.2,0.2,100,62.5,0.9,training\n")
    ds = dl.build_dataset("koniq-10k", tmp_path, "lq")
    assert [s.label for s in ds.samples] == [62.5]


def test_repeats_are_consecutive(tmp_path: Path) -> None:
    make_koniq(tmp_path, n=3)
    ds = dl.build_dataset("koniq-10k", tmp_path, "lq", repeats=2)
    assert [s.content_id for s in ds.samples] == [0, 0, 1, 1, 2, 2]


def test_modes_need_what_they_read(tmp_path: Path) -> None:
    make_koniq(tmp_path / "k", n=2)
    with pytest.raises(UserError, match="koniq-10k is an authentic dataset.*teacher"):
        dl.build_dataset("koniq-10k", tmp_path / "k", "lq_hq")
    with pytest.raises(UserError, match="ref_paths is empty"):
        dl.build_dataset("koniq-10k", tmp_path / "k", "lq_hq_ref", ref_paths=[])
    with pytest.raises(UserError, match="unknown mode 'hq'"):
        dl.build_dataset("koniq-10k", tmp_path / "k", "hq")
    pool = [write_image(tmp_path / "ref.png")]
    item = dl.build_dataset("koniq-10k", tmp_path / "k", "lq_hq_ref", ref_paths=pool, patch_size=16)[0]
    assert set(item) == {"lq", "ref", "label", "index"}


# ---- splits ------------------------------------------------------------------------------------------------


def test_split_contents_is_seeded_and_disjoint() -> None:
    train, test = dl.split_contents(81, 0.8, seed=3)
    assert (len(train), len(test)) == (65, 16)
    assert sorted(train + test) == list(range(81))
    assert dl.split_contents(81, 0.8, seed=3) == (train, test)
    assert dl.split_contents(81, 0.8, seed=4) != (train, test)
    assert [len(dl.split_contents(n)[0]) for n in (29, 30, 25, 1162)] == [23, 24, 20, 930]
    with pytest.raises(UserError):
        dl.split_contents(10, 1.5)


def test_split_by_content_keeps_references_on_one_side(tmp_path: Path) -> None:
    make_kadid(tmp_path, n_refs=5, n_types=1, n_levels=2)
    n = dl.build_dataset("kadid10k", tmp_path, "lq").num_contents
    train_ids, test_ids = dl.split_contents(n, 0.8, seed=0)
    train = dl.build_dataset("kadid10k", tmp_path, "lq", content_ids=train_ids)
    test = dl.build_dataset("kadid10k", tmp_path, "lq", content_ids=test_ids)
    assert (len(train), len(test)) == (8, 2)
    assert not {s.hq_path for s in train.samples} & {s.hq_path for s in test.samples}


# ---- reference pool ---------------------------------------------------------------------------------------


def test_list_reference_images(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.JPEG", "d.bmp", "e.tif"):
        write_image(tmp_path / name, (8, 8))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in dl.list_reference_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.JPEG", "d.bmp", "e.tif"]
    with pytest.raises(UserError, match=f"reference image folder not found: {tmp_path / 'nope'}"):
        dl.list_reference_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image .* in reference folder .*empty"):
        dl.list_reference_images(tmp_path / "empty")


# ---- broken copies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_missing_image_is_named(tmp_path: Path, name: str) -> None:
    entries = MAKERS[name](tmp_path)
    victim = tmp_path / entries[-1].lq
    victim.unlink()
    with pytest.raises(UserError, match=f"1 image file\\(s\\) missing.*\n  {victim}"):
        dl.build_dataset(name, tmp_path, "lq")


def test_missing_reference_is_named_only_when_needed(tmp_path: Path) -> None:
    make_kadid(tmp_path)
    (tmp_path / "images/I02.png").unlink()
    assert len(dl.build_dataset("kadid10k", tmp_path, "lq")) == 12
    with pytest.raises(UserError, match="1 image file.*missing.*\n  .*images/I02.png\n"):
        dl.build_dataset("kadid10k", tmp_path, "lq_hq")


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_missing_label_file_names_path_and_layout(tmp_path: Path, name: str) -> None:
    MAKERS[name](tmp_path)
    label = tmp_path / LABEL_FILES[name]
    shutil.rmtree(label) if label.is_dir() else label.unlink()
    with pytest.raises(UserError, match=f"not found: {label}\nexpected layout of {tmp_path}:\n"):
        dl.build_dataset(name, tmp_path, "lq")


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_missing_root_is_named(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match=f"dataset folder not found: {tmp_path / 'x'}\nexpected layout"):
        dl.build_dataset(name, tmp_path / "x", "lq")


@pytest.mark.parametrize(("name", "file", "line", "bad"), [
    ("kadid10k", "dmos.csv", 3, "I01_01_02.png,I01.png,abc,0.5"),
    ("csiq", "csiq_label.txt", 2, "1600.AWGN.2.png"),
    ("tid2013", "mos_with_names.txt", 4, "5.1 nonsense"),
    ("pipal", "Train_Label/A0001.txt", 2, "A0001_01_00.bmp;1100"),
    ("koniq-10k", "koniq10k_scores_and_distributions.csv", 2, "10004473376.jpg,1,2,3,4,5,15,1,0.5,"),
])
def test_bad_row_is_named(tmp_path: Path, name: str, file: str, line: int, bad: str) -> None:
    MAKERS[name](tmp_path)
    path = tmp_path / file
    lines = path.read_text().splitlines()
    lines[line - 1] = bad
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"bad row in {path}, line {line}: expected"):
        dl.build_dataset(name, tmp_path, "lq")


def test_bad_spreadsheet_rows_and_files(tmp_path: Path) -> None:
    make_bid(tmp_path, n=2)
    write_xlsx(tmp_path / "DatabaseGrades.xlsx", [["Image", "Grade"], [1, 2.5], [2, "n/a"]])
    with pytest.raises(UserError, match="bad row in .*DatabaseGrades.xlsx, row 3: expected a numeric grade"):
        dl.build_dataset("bid", tmp_path, "lq")
    (tmp_path / "DatabaseGrades.xlsx").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read spreadsheet .*DatabaseGrades.xlsx"):
        dl.build_dataset("bid", tmp_path, "lq")


def test_bad_mat_files_are_named(tmp_path: Path) -> None:
    make_live(tmp_path)
    savemat(tmp_path / "dmos_realigned.mat", {"dmos_new": np.zeros((1, 10)), "orgs": np.zeros((1, 10))})
    with pytest.raises(UserError, match="dmos_realigned.mat: 'dmos_new' has 10 entries, expected 982"):
        dl.build_dataset("live", tmp_path, "lq")
    savemat(tmp_path / "dmos_realigned.mat", {"dmos": np.zeros((1, 982))})
    with pytest.raises(UserError, match="has no variable 'dmos_new' \\(variables: dmos\\)"):
        dl.build_dataset("live", tmp_path, "lq")
    (tmp_path / "dmos_realigned.mat").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read MATLAB file .*dmos_realigned.mat"):
        dl.build_dataset("live", tmp_path, "lq")


def test_xlsx_reader_cells(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "t.xlsx", [["h1", None, "h3"], [1, 2.5], [], ["x & y"]])
    assert read_xlsx_rows(path) == [["h1", None, "h3"], [1.0, 2.5], [], ["x & y"]]
    assert [column_index(c) for c in ("A", "B", "Z", "AA", "AB")] == [0, 1, 25, 26, 27]
