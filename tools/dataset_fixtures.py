"""Writers of tiny datasets in each dataset's on-disk format, quirks included, for the tests and the benchmarks.

Each `make_*` writes a dataset under `root` and returns the expected entries (`FakeEntry`, paths
relative to `root`) in label-file order. Image pixels encode their position (R = x, G = y mod 256)
and B identifies the image, so crops can be located exactly.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image
from scipy.io import savemat

Size = tuple[int, int]


class FakeEntry(NamedTuple):
    """One scored image of a fixture: paths relative to the dataset root, label, content key."""

    lq: str
    hq: str | None
    label: float
    content: str


def pattern(size: Size, variant: int = 0) -> np.ndarray:
    """H x W x 3 uint8 image: R = x mod 256, G = y mod 256, B = variant mod 256."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (np.arange(w) % 256)[None, :]
    img[..., 1] = (np.arange(h) % 256)[:, None]
    img[..., 2] = variant % 256
    return img


def write_image(path: str | Path, size: Size = (64, 48), variant: int = 0) -> Path:
    """Write a pattern image (format from the extension) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".png": "PNG", ".tif": "TIFF"}[path.suffix.lower()]
    Image.fromarray(pattern(size, variant)).save(path, fmt)
    return path


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _cell(values: Sequence[str]) -> np.ndarray:
    cells = np.empty((1, len(values)), dtype=object)
    for i, v in enumerate(values):
        cells[0, i] = v
    return cells


# ---- synthetic ------------------------------------------------------------------------------------------


def make_kadid(root: str | Path, n_refs: int = 3, n_types: int = 2, n_levels: int = 2,
               size: Size = (64, 48)) -> list[FakeEntry]:
    """KADID-10k: images/I01.png, images/I01_01_01.png ..., dmos.csv (with spaces after commas)."""
    root = Path(root)
    entries, rows = [], ["dist_img,ref_img,dmos,var"]
    for r in range(1, n_refs + 1):
        ref = f"I{r:02d}.png"
        write_image(root / "images" / ref, size, variant=r)
        for t in range(1, n_types + 1):
            for lev in range(1, n_levels + 1):
                dist = f"I{r:02d}_{t:02d}_{lev:02d}.png"
                label = round(5 - 0.5 * lev - 0.1 * t + 0.01 * r, 4)
                write_image(root / "images" / dist, size, variant=100 + len(entries))
                rows.append(f"{dist}, {ref}, {label}, 0.5")
                entries.append(FakeEntry(f"images/{dist}", f"images/{ref}", label, ref))
    _write_text(root / "dmos.csv", "\n".join(rows) + "\n")
    return entries


LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


def _live_flagged(folder: str, k: int) -> bool:
    """The release's pattern of `orgs` copies: 58 scattered in jp2k and jpeg, img146-174 elsewhere."""
    if folder == "jp2k":
        return k % 3 == 1 and k <= 172
    if folder == "jpeg":
        return k % 3 == 2 and k <= 173
    return k >= 146


def make_live(root: str | Path, size: Size = (64, 48), n_refs: int = 3, full: bool = False,
              zero_padded: bool = False) -> list[FakeEntry]:
    """LIVE Release 2: the two .mat files with all 982 entries, refimgs/, five distortion folders.

    `full`: the release's 203 `orgs` flags, 779 images written; otherwise only img2 and img5 of each
    folder are scored (everything else flagged) and one flagged copy (jp2k/img1.bmp) is on disk.
    `zero_padded`: distorted files named 001.bmp ... as the original code expected.
    """
    root = Path(root)
    refs = [f"ref{i:02d}.bmp" for i in range(n_refs)]
    if not full:
        refs = ["bikes.bmp", "caps.bmp", "parrots.bmp"][:n_refs]
    for i, ref in enumerate(refs):
        write_image(root / "refimgs" / ref, size, variant=i)
    names, dmos, orgs, entries = [], [], [], []
    for i, (folder, k) in enumerate((f, k) for f, count in LIVE_FOLDERS for k in range(1, count + 1)):
        ref = refs[i % len(refs)]
        flagged = _live_flagged(folder, k) if full else k not in (2, 5)
        label = 0.0 if flagged else round((i * 7) % 113 - 2.5, 3)
        names.append(ref)
        dmos.append(label)
        orgs.append(1.0 if flagged else 0.0)
        file = f"{folder}/{k:03d}.bmp" if zero_padded else f"{folder}/img{k}.bmp"
        if not flagged:
            write_image(root / file, size, variant=i)
            entries.append(FakeEntry(file, f"refimgs/{ref}", label, ref))
        elif not full and (folder, k) == ("jp2k", 1):
            write_image(root / file, size, variant=i)  # a reference copy on disk: must not be counted
    savemat(root / "dmos_realigned.mat", {"dmos_new": np.array([dmos]), "dmos_std": np.ones((1, len(dmos))),
                                          "orgs": np.array([orgs])})
    savemat(root / "refnames_all.mat", {"refnames_all": _cell(names)})
    return entries


CSIQ_CONTENTS = ("1600", "aerial_city", "boston", "bridge", "butter_flower", "cactus")
CSIQ_TYPES = (("awgn", "AWGN"), ("jpeg", "JPEG"), ("BLUR", "BLUR"))  # (shipped subfolder, file token)


def make_csiq(root: str | Path, n_refs: int = 3, size: Size = (64, 48), flat: bool = True,
              n_levels: int = 2) -> list[FakeEntry]:
    """CSIQ: src_imgs/, csiq_label.txt, distorted in dst_imgs_all/ (`flat`) or dst_imgs/<type>/."""
    root = Path(root)
    contents = CSIQ_CONTENTS[:n_refs]
    for c_idx, content in enumerate(contents):
        write_image(root / "src_imgs" / f"{content}.png", size, variant=c_idx)
    lines, entries = [], []
    for t_idx, (folder, token) in enumerate(CSIQ_TYPES):
        for c_idx, content in enumerate(contents):
            for lev in range(1, n_levels + 1):
                name = f"{content}.{token}.{lev}.png"
                label = round(0.1 * lev + 0.05 * t_idx + 0.01 * c_idx, 4)
                rel = f"dst_imgs_all/{name}" if flat else f"dst_imgs/{folder}/{name}"
                write_image(root / rel, size, variant=50 + len(entries))
                lines.append(f"{name} {label}")
                entries.append(FakeEntry(rel, f"src_imgs/{content}.png", label, f"{content}.png"))
    _write_text(root / "csiq_label.txt", "\n".join(lines) + "\n")
    return entries


def make_tid2013(root: str | Path, n_refs: int = 3, size: Size = (64, 48),
                 n_levels: int = 2) -> list[FakeEntry]:
    """TID2013 with its case quirks: references I01.BMP ... and i25.bmp (always included, as the last),
    distorted i01_01_2.bmp but I01_01_1.bmp / I01_11_1.BMP / I01_13_1.BMP on disk, all names lower-case
    in mos_with_names.txt."""
    root = Path(root)
    ids = [f"{i:02d}" for i in range(1, n_refs)] + ["25"]
    lines, entries = [], []
    for r_idx, rid in enumerate(ids):
        ref = "i25.bmp" if rid == "25" else f"I{rid}.BMP"
        write_image(root / "reference_images" / ref, size, variant=r_idx)
        for t in ("01", "11", "13"):
            for lev in range(1, n_levels + 1):
                listed = f"i{rid}_{t}_{lev}.bmp"
                on_disk = listed
                if lev == 1:
                    on_disk = f"I{rid}_{t}_1.bmp" if t == "01" else f"I{rid}_{t}_1.BMP"
                label = round(7 - lev - 0.1 * int(t) + 0.01 * int(rid), 4)
                write_image(root / "distorted_images" / on_disk, size, variant=60 + len(entries))
                lines.append(f"{label} {listed}")
                lq, hq = f"distorted_images/{on_disk}", f"reference_images/{ref}"
                entries.append(FakeEntry(lq, hq, label, rid))
    _write_text(root / "mos_with_names.txt", "\n".join(lines) + "\n")
    return entries


def make_pipal(root: str | Path, n_refs: int = 2, per_ref: int = 3, size: Size = (64, 48)) -> list[FakeEntry]:
    """PIPAL public training part: Train_Ref/, Distortion_1/ and Distortion_2/, Train_Label/A<id>.txt."""
    root = Path(root)
    entries = []
    for r in range(n_refs):
        ref = f"A{2 * r + 1:04d}"  # ids with gaps, as released
        write_image(root / "Train_Ref" / f"{ref}.bmp", size, variant=r)
        lines = []
        for d in range(per_ref):
            name = f"{ref}_{d:02d}_00.bmp"
            rel = f"Distortion_{d % 2 + 1}/{name}"
            label = round(1000 + 100 * d + 10 * r + 0.25, 3)
            write_image(root / rel, size, variant=70 + len(entries))
            lines.append(f"{name},{label}")
            entries.append(FakeEntry(rel, f"Train_Ref/{ref}.bmp", label, f"{ref}.bmp"))
        _write_text(root / "Train_Label" / f"{ref}.txt", "\n".join(lines) + "\n")
    return entries


# ---- authentic ------------------------------------------------------------------------------------------


def make_koniq(root: str | Path, n: int = 4, size: Size = (64, 48)) -> list[FakeEntry]:
    """KonIQ-10k: 1024x768/<id>.jpg and koniq10k_scores_and_distributions.csv (label MOS_zscore)."""
    root = Path(root)
    rows = ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"]
    entries = []
    for i in range(n):
        name = f"{10004473376 + 1111 * i}.jpg"
        write_image(root / "1024x768" / name, size, variant=i)
        z = round(10.5 + 15 * i, 3)
        rows.append(f"{name},1,2,3,4,5,15,{1 + 0.5 * i},0.5,{z}")
        entries.append(FakeEntry(f"1024x768/{name}", None, z, name))
    _write_text(root / "koniq10k_scores_and_distributions.csv", "\n".join(rows) + "\n")
    return entries


def make_livec(root: str | Path, n: int = 4, size: Size = (64, 48)) -> list[FakeEntry]:
    """LIVE Challenge: Data/*.mat whose first 7 entries are t1..t7.bmp, Images/ with .bmp and .JPG."""
    root = Path(root)
    names, mos, entries = [f"t{i}.bmp" for i in range(1, 8)], [50.0] * 7, []
    for i in range(1, 8):
        write_image(root / "Images" / "trainingImages" / f"t{i}.bmp", size, variant=i)
    for i in range(n):
        name = f"{i + 3}.bmp" if i % 2 == 0 else f"{i + 3}.JPG"
        label = round(20 + 10 * i + 0.25, 2)
        write_image(root / "Images" / name, size, variant=10 + i)
        names.append(name)
        mos.append(label)
        entries.append(FakeEntry(f"Images/{name}", None, label, name))
    (root / "Data").mkdir(parents=True, exist_ok=True)
    savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": _cell(names).T})
    savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([mos])})
    return entries


def write_xlsx(path: str | Path, rows: Sequence[Sequence[object]]) -> Path:
    """A minimal .xlsx workbook (one sheet): str cells as shared strings, numbers as numbers, None empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel_ns = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    shared: list[str] = []
    xml_rows = []
    for r, row in enumerate(rows, start=1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{chr(ord('A') + c)}{r}"
            if value is None:
                continue
            if isinstance(value, str):
                shared.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{len(shared) - 1}</v></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{value}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    sheet = (f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{ns}">'
             f'<sheetData>{"".join(xml_rows)}</sheetData></worksheet>')
    strings = "".join(f"<si><t>{escape(s)}</t></si>" for s in shared)
    parts = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/></Types>'),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel_ns}/officeDocument" Target="xl/workbook.xml"/>'
            '</Relationships>'),
        "xl/workbook.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{ns}" xmlns:r="{rel_ns}">'
            '<bookViews><workbookView activeTab="0"/></bookViews>'
            '<sheets><sheet name="Plan1" sheetId="1" r:id="rId1"/></sheets></workbook>'),
        "xl/_rels/workbook.xml.rels": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel_ns}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{rel_ns}/sharedStrings" Target="sharedStrings.xml"/>'
            '</Relationships>'),
        "xl/worksheets/sheet1.xml": sheet,
        "xl/sharedStrings.xml": (f'<?xml version="1.0" encoding="UTF-8"?>'
                                 f'<sst xmlns="{ns}" count="{len(shared)}">{strings}</sst>'),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            archive.writestr(name, text)
    return path


def make_bid(root: str | Path, n: int = 4, size: Size = (64, 48)) -> list[FakeEntry]:
    """BID: DatabaseImage0001.JPG ... in the root and DatabaseGrades.xlsx (A: number, B: grade)."""
    root = Path(root)
    rows: list[list[object]] = [["Image", "Mean grade", "Notes"]]
    entries = []
    for i in range(1, n + 1):
        name = f"DatabaseImage{i:04d}.JPG"
        grade = round(0.5 + 0.9 * i, 2)
        write_image(root / name, size, variant=i)
        rows.append([i, grade, "blur"])
        entries.append(FakeEntry(name, None, grade, name))
    write_xlsx(root / "DatabaseGrades.xlsx", rows)
    return entries


# ---- non-aligned reference pool -------------------------------------------------------------------------


def make_ref_pool(folder: str | Path, n: int = 3, size: Size = (96, 80)) -> list[Path]:
    """A folder of HQ reference PNGs named like DIV2K (0801.png ...); returns their sorted paths."""
    return [write_image(Path(folder) / f"{801 + i:04d}.png", size, variant=200 + i) for i in range(n)]


MAKERS = {
    "kadid10k": make_kadid, "live": make_live, "csiq": make_csiq, "tid2013": make_tid2013,
    "pipal": make_pipal, "koniq-10k": make_koniq, "livec": make_livec, "bid": make_bid,
}
