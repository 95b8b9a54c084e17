"""One reader per dataset: each parses its label file(s) as the authors ship them (see dataset/README.md)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from common.errors import UserError
from dataloaders.base import IQADataset, Sample
from dataloaders.image_io import CaseInsensitiveLookup
from dataloaders.xlsx import read_xlsx_rows

# ---- shared parsing helpers ---------------------------------------------------------------------------


def _text_rows(cls: type[IQADataset], path: Path) -> list[tuple[int, str]]:
    """(line number, stripped line) of every non-blank line of a text label file."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        raise UserError(f"{cls.name}: cannot read label file {path}: {err}") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


_EXTRA = "\0extra"  # DictReader key of the fields beyond the header's


def _csv_rows(cls: type[IQADataset], path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header line that must contain `columns`."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True, restkey=_EXTRA)
            header = [h.strip() for h in reader.fieldnames or []]
            lacking = [c for c in columns if c not in header]
            if lacking:
                raise UserError(f"{cls.name}: label file {path} lacks column(s) {', '.join(lacking)} "
                                f"(header: {','.join(header) or 'empty'})")
            reader.fieldnames = header
            rows = []
            for row in reader:
                extra = row.pop(_EXTRA, None)  # fields beyond the header's: kept for error messages only
                if extra:
                    row[_EXTRA] = ",".join(extra)
                if any((v or "").strip() for v in row.values()):
                    rows.append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{cls.name}: cannot read label file {path}: {err}") from None
    return rows


def _joined(row: dict[str, str]) -> str:
    """A CSV row back as one comma-separated string, for error messages."""
    return ",".join("" if v is None else str(v) for v in row.values())


def _number(cls: type[IQADataset], path: Path, line_no: int, value: object, expected: str,
            unit: str = "line") -> float:
    """`value` as a finite float, or a bad-row UserError."""
    try:
        number = float(str(value).strip()) if not isinstance(value, float) else value
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise cls.bad_row(path, line_no, expected, value, unit)
    return number


def _load_mat(cls: type[IQADataset], path: Path, key: str) -> np.ndarray:
    """Variable `key` of a MATLAB .mat file, flattened."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        data = loadmat(str(path))
    except (OSError, ValueError, NotImplementedError, TypeError, MatReadError) as err:
        raise UserError(f"{cls.name}: cannot read MATLAB file {path}: {err}") from None
    if key not in data:
        found = ", ".join(k for k in data if not k.startswith("__")) or "none"
        raise UserError(f"{cls.name}: {path} has no variable '{key}' (variables: {found})")
    return np.asarray(data[key]).ravel()


def _mat_strings(cls: type[IQADataset], path: Path, key: str) -> list[str]:
    """A MATLAB cell array of strings as a list of str."""
    out = []
    for cell in _load_mat(cls, path, key):
        flat = np.asarray(cell).ravel()
        out.append(str(flat[0]).strip() if flat.size else "")
    return out


def _synthetic(items: Iterable[tuple[Path, Path, float, str]]) -> tuple[list[Sample], int]:
    """Samples (lq, hq, label, content key) with content ids = positions of the keys in sorted order."""
    items = list(items)
    keys = {key: i for i, key in enumerate(sorted({key for *_, key in items}))}
    return [Sample(lq, hq, label, keys[key]) for lq, hq, label, key in items], len(keys)


def _authentic(items: Iterable[tuple[Path, float]]) -> tuple[list[Sample], int]:
    """Samples (lq, label) of a dataset without references; the content id is the position."""
    samples = [Sample(lq, None, label, i) for i, (lq, label) in enumerate(items)]
    return samples, len(samples)


def _find_in(lookup: CaseInsensitiveLookup, folders: Sequence[Path], name: str) -> Path:
    """The first folder holding `name` (ignoring case), else `folders[0]/name`."""
    for folder in folders:
        found = lookup.find(folder, name)
        if found is not None:
            return found
    return folders[0] / name


def _nonempty(cls: type[IQADataset], root: Path, path: Path, rows: list) -> list:
    if not rows:
        raise cls.layout_error(root, f"label file {path} lists no image")
    return rows


# ---- synthetic datasets (pixel-aligned references) ----------------------------------------------------


class KADID10k(IQADataset):
    """KADID-10k: dmos.csv (dist_img, ref_img, dmos on 1-5, higher = better), all images in images/."""

    name, higher_is_better, has_aligned_reference = "kadid10k", True, True
    layout = ("  dmos.csv                 header dist_img,ref_img,dmos,var; one row per distorted image\n"
              "  images/I01.png ...       the 81 references\n"
              "  images/I01_01_01.png ... the 10,125 distorted images")

    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        label_file = cls.require(root, "dmos.csv")
        images = cls.require(root, "images", folder=True)
        lookup = CaseInsensitiveLookup()
        rows = _nonempty(cls, root, label_file, _csv_rows(cls, label_file, ("dist_img", "ref_img", "dmos")))
        items = []
        for line_no, row in rows:
            dist, ref = (row.get("dist_img") or "").strip(), (row.get("ref_img") or "").strip()
            if not dist or not ref:
                raise cls.bad_row(label_file, line_no, "dist_img,ref_img,dmos,var", _joined(row))
            label = _number(cls, label_file, line_no, row["dmos"], "a numeric dmos")
            items.append((lookup.resolve(images, dist), lookup.resolve(images, ref), label, ref))
        return _synthetic(items)


class LIVE(IQADataset):
    """LIVE IQA Release 2: realigned DMOS (higher = worse); entries flagged `orgs` are dropped."""

    name, higher_is_better, has_aligned_reference = "live", False, True
    # The authors' global entry order: folder and number of entries.
    FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
    layout = ("  dmos_realigned.mat       dmos_new, orgs (1x982)\n"
              "  refnames_all.mat         refnames_all (1x982 cell of reference names)\n"
              "  refimgs/<name>.bmp       the 29 references\n"
              "  jp2k/ jpeg/ wn/ gblur/ fastfading/   img1.bmp ... (or 001.bmp ...)")

    @classmethod
    def entry_names(cls) -> list[tuple[str, int]]:
        """(folder, 1-based number in the folder) of each of the 982 global entries."""
        return [(folder, k) for folder, count in cls.FOLDERS for k in range(1, count + 1)]

    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        dmos_file = cls.require(root, "dmos_realigned.mat")
        names_file = cls.require(root, "refnames_all.mat")
        refimgs = cls.require(root, "refimgs", folder=True)
        dmos = _load_mat(cls, dmos_file, "dmos_new").astype(float)
        orgs = _load_mat(cls, dmos_file, "orgs")
        refnames = _mat_strings(cls, names_file, "refnames_all")
        entries = cls.entry_names()
        for what, values, path in (("dmos_new", dmos, dmos_file), ("orgs", orgs, dmos_file),
                                   ("refnames_all", refnames, names_file)):
            if len(values) != len(entries):
                raise UserError(f"live: {path}: '{what}' has {len(values)} entries, expected {len(entries)} "
                                "(jp2k 227, jpeg 233, wn 174, gblur 174, fastfading 174)")
        lookup = CaseInsensitiveLookup()
        items = []
        for i, ((folder, k), label, org, ref) in enumerate(zip(entries, dmos, orgs, refnames)):
            if org:
                continue
            if not math.isfinite(label) or not ref:
                raise cls.bad_row(dmos_file, i + 1, "a finite dmos_new and a reference name", (label, ref),
                                  "entry")
            dir_ = lookup.resolve(root, folder)
            lq = lookup.find(dir_, f"img{k}.bmp") or lookup.find(dir_, f"{k:03d}.bmp") or dir_ / f"img{k}.bmp"
            items.append((lq, lookup.resolve(refimgs, ref), float(label), ref))
        return _synthetic(items)


class CSIQ(IQADataset):
    """CSIQ: csiq_label.txt (`<name> <dmos>`, 0-1, higher = worse); distorted flattened or per type."""

    name, higher_is_better, has_aligned_reference = "csiq", False, True
    layout = ("  csiq_label.txt           '<distorted name> <dmos>' per line (from the HyperIQA repository)\n"
              "  src_imgs/<content>.png   the 30 references\n"
              "  dst_imgs_all/<content>.<TYPE>.<level>.png   the 866 distorted images, flattened\n"
              "    (or as shipped: dst_imgs/<type>/<content>.<TYPE>.<level>.png)")

    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        label_file = cls.require(root, "csiq_label.txt")
        src = cls.require(root, "src_imgs", folder=True)
        folders = [root / "dst_imgs_all"] if (root / "dst_imgs_all").is_dir() else []
        if (root / "dst_imgs").is_dir():
            folders += sorted(p for p in (root / "dst_imgs").iterdir() if p.is_dir())
        if not folders:
            raise cls.layout_error(root, f"distorted image folder not found: {root / 'dst_imgs_all'}")
        lookup = CaseInsensitiveLookup()
        items = []
        for line_no, line in _nonempty(cls, root, label_file, _text_rows(cls, label_file)):
            parts = line.split()
            if len(parts) < 2 or len(parts[0].split(".")) < 3:
                raise cls.bad_row(label_file, line_no, "'<content>.<TYPE>.<level>.png <dmos>'", line)
            label = _number(cls, label_file, line_no, parts[1], "a numeric dmos")
            fields = parts[0].split(".")
            ref = f"{fields[0]}.{fields[-1]}"
            items.append((_find_in(lookup, folders, parts[0]), lookup.resolve(src, ref), label, ref))
        return _synthetic(items)


class TID2013(IQADataset):
    """TID2013: mos_with_names.txt (`<mos> <name>`, higher = better); names resolved ignoring case."""

    name, higher_is_better, has_aligned_reference = "tid2013", True, True
    layout = ("  mos_with_names.txt       '<MOS> <distorted name>' per line\n"
              "  reference_images/        I01.BMP ... I24.BMP, i25.bmp\n"
              "  distorted_images/        i01_01_1.bmp ... (3,000 images)")

    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        label_file = cls.require(root, "mos_with_names.txt")
        refs = cls.require(root, "reference_images", folder=True)
        dist = cls.require(root, "distorted_images", folder=True)
        lookup = CaseInsensitiveLookup()
        items = []
        for line_no, line in _nonempty(cls, root, label_file, _text_rows(cls, label_file)):
            parts = line.split()
            if len(parts) < 2 or not parts[1][1:3].isdigit():
                raise cls.bad_row(label_file, line_no, "'<MOS> iXX_YY_Z.bmp'", line)
            label = _number(cls, label_file, line_no, parts[0], "a numeric MOS")
            ref_id = parts[1][1:3]
            hq = lookup.resolve(refs, f"I{ref_id}.BMP")
            items.append((lookup.resolve(dist, parts[1]), hq, label, ref_id))
        return _synthetic(items)


class PIPAL(IQADataset):
    """PIPAL public training part: Train_Label/*.txt (`<name>,<elo>`, higher = better)."""

    name, higher_is_better, has_aligned_reference = "pipal", True, True
    layout = ("  Train_Label/A0001.txt ...   '<distorted name>,<Elo score>' per line (or MOS_Scores_train/)\n"
              "  Train_Ref/A0001.bmp ...     the 200 references (or Reference_train/)\n"
              "  Distortion_1/ ... Distortion_4/   A0001_00_00.bmp ...\n"
              "    (or Distortion1..4, or Distortion/Distortion_1..4)")

    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        label_dir = cls.require(root, "Train_Label", "MOS_Scores_train", folder=True)
        ref_dir = cls.require(root, "Train_Ref", "Reference_train", folder=True)
        folders = [d for d in sorted(root.iterdir())
                   if d.is_dir() and d.name.lower().startswith("distortion")]
        folders += [d for top in list(folders) for d in sorted(top.iterdir()) if d.is_dir()]
        if not folders:
            raise cls.layout_error(root, f"no distorted image folder (Distortion_1 ...) in {root}")
        label_files = sorted(p for p in label_dir.iterdir() if p.suffix.lower() == ".txt")
        if not label_files:
            raise cls.layout_error(root, f"no label file (*.txt) in {label_dir}")
        lookup = CaseInsensitiveLookup()
        items = []
        for label_file in label_files:
            for line_no, line in _text_rows(cls, label_file):
                parts = [p.strip() for p in line.split(",")]
                if len(parts) < 2 or len(parts[0]) < 6:
                    raise cls.bad_row(label_file, line_no, "'A0001_00_00.bmp,<Elo score>'", line)
                label = _number(cls, label_file, line_no, parts[1], "a numeric Elo score")
                ref = f"{parts[0][:5]}.bmp"
                items.append((_find_in(lookup, folders, parts[0]), lookup.resolve(ref_dir, ref), label, ref))
        return _synthetic(_nonempty(cls, root, label_dir, items))


# ---- authentic datasets (no reference) -----------------------------------------------------------------


class KonIQ10k(IQADataset):
    """KonIQ-10k: the scores CSV, label MOS_zscore (0-100, higher = better), images in 1024x768/."""

    name, higher_is_better, has_aligned_reference = "koniq-10k", True, False
    layout = ("  koniq10k_scores_and_distributions.csv   header image_name,...,MOS,SD,MOS_zscore\n"
              "    (or the GitHub metadata/koniq10k_distributions_sets.csv, whose MOS is the 0-100 score)\n"
              "  1024x768/<image_name>.jpg               the 10,073 images")

    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        official = root / "koniq10k_scores_and_distributions.csv"
        if official.is_file() or not root.is_dir():
            label_file, column = cls.require(root, official.name), "MOS_zscore"
        else:
            label_file = cls.require(root, official.name, "koniq10k_distributions_sets.csv",
                                     "metadata/koniq10k_distributions_sets.csv")
            column = "MOS"
        images = cls.require(root, "1024x768", folder=True)
        lookup = CaseInsensitiveLookup()
        items = []
        rows = _nonempty(cls, root, label_file, _csv_rows(cls, label_file, ("image_name", column)))
        for line_no, row in rows:
            name = (row.get("image_name") or "").strip()
            if not name:
                raise cls.bad_row(label_file, line_no, f"image_name,...,{column}", _joined(row))
            items.append((lookup.resolve(images, name), _number(cls, label_file, line_no, row[column],
                                                                f"a numeric {column}")))
        return _authentic(items)


class LIVEC(IQADataset):
    """LIVE Challenge: Data/AllImages_release.mat + AllMOS_release.mat; the first 7 entries are skipped."""

    name, higher_is_better, has_aligned_reference = "livec", True, False
    SKIPPED = 7  # t1.bmp ... t7.bmp, the subjects' training images
    layout = ("  Data/AllImages_release.mat   AllImages_release (1169x1 cell of file names)\n"
              "  Data/AllMOS_release.mat      AllMOS_release (1x1169)\n"
              "  Images/3.bmp ... 1164.bmp    the 1,162 images (.bmp and .JPG)")

    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        nested = root / "ChallengeDB_release"
        base = nested if not (root / "Data").is_dir() and (nested / "Data").is_dir() else root
        names_file = cls.require(base, "Data/AllImages_release.mat")
        mos_file = cls.require(base, "Data/AllMOS_release.mat")
        images = cls.require(base, "Images", folder=True)
        names = _mat_strings(cls, names_file, "AllImages_release")
        mos = _load_mat(cls, mos_file, "AllMOS_release").astype(float)
        if len(names) != len(mos) or len(names) <= cls.SKIPPED:
            raise UserError(f"livec: {names_file} lists {len(names)} images and {mos_file} {len(mos)} "
                            f"scores; expected the same number, more than {cls.SKIPPED}")
        lookup = CaseInsensitiveLookup()
        items = []
        for i in range(cls.SKIPPED, len(names)):
            if not names[i] or not math.isfinite(mos[i]):
                raise cls.bad_row(names_file, i + 1, "a file name and a finite MOS", (names[i], mos[i]),
                                  "entry")
            items.append((lookup.resolve(images, names[i]), float(mos[i])))
        return _authentic(items)


class BID(IQADataset):
    """BID: DatabaseGrades.xlsx (A: image number, B: mean grade, higher = better), read without openpyxl."""

    name, higher_is_better, has_aligned_reference = "bid", True, False
    resize_to = (512, 512)  # as the original loaders do before cropping
    layout = ("  DatabaseGrades.xlsx   row 1 header; column A image number, column B mean grade\n"
              "  DatabaseImage0001.JPG ... DatabaseImage0586.JPG   the 586 images, in the root")

    @classmethod
    def read_index(cls, root: Path) -> tuple[list[Sample], int]:
        sheet = cls.require(root, "DatabaseGrades.xlsx")
        lookup = CaseInsensitiveLookup()
        items = []
        for row_no, row in enumerate(read_xlsx_rows(sheet)[1:], start=2):
            cells = (list(row) + [None, None])[:2]
            if all(c is None or str(c).strip() == "" for c in cells):
                continue
            number = _number(cls, sheet, row_no, cells[0], "an image number in column A", "row")
            grade = _number(cls, sheet, row_no, cells[1], "a numeric grade in column B", "row")
            if number != int(number) or number < 0:
                raise cls.bad_row(sheet, row_no, "an integer image number in column A", cells[0], "row")
            items.append((lookup.resolve(root, f"DatabaseImage{int(number):04d}.JPG"), grade))
        return _authentic(_nonempty(cls, root, sheet, items))


DATASETS: dict[str, type[IQADataset]] = {
    cls.name: cls for cls in (KADID10k, LIVE, CSIQ, TID2013, KonIQ10k, LIVEC, BID, PIPAL)
}
