"""Minimal .xlsx reader (zip of XML parts) with the standard library only: cell values of one sheet."""

from __future__ import annotations

import posixpath
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

from common.errors import UserError

_NS = {
    "m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
    "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    "pr": "http://schemas.openxmlformats.org/package/2006/relationships",
}
_CELL_REF = re.compile(r"^([A-Z]+)(\d+)$")

Cell = str | float | bool | None


def column_index(letters: str) -> int:
    """0-based column index of spreadsheet column letters ('A' -> 0, 'AA' -> 26)."""
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("A") + 1)
    return index - 1


def _text(node: ElementTree.Element | None) -> str:
    """All text of <t> elements under a node (shared strings and inline strings may be split in runs)."""
    if node is None:
        return ""
    return "".join(t.text or "" for t in node.iter(f"{{{_NS['m']}}}t"))


def _active_sheet_part(archive: zipfile.ZipFile) -> str:
    """Path inside the archive of the workbook's active sheet (the first one if none is marked)."""
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    sheets = workbook.findall("m:sheets/m:sheet", _NS)
    if not sheets:
        raise ValueError("the workbook lists no sheet")
    view = workbook.find("m:bookViews/m:workbookView", _NS)
    active = int(view.get("activeTab", "0")) if view is not None else 0
    sheet = sheets[min(active, len(sheets) - 1)]
    rel_id = sheet.get(f"{{{_NS['r']}}}id")
    rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    for rel in rels.findall("pr:Relationship", _NS):
        if rel.get("Id") == rel_id:
            target = rel.get("Target", "")
            return target.lstrip("/") if target.startswith("/") else posixpath.normpath(f"xl/{target}")
    raise ValueError(f"sheet relationship {rel_id} not found")


def _cell_value(cell: ElementTree.Element, shared: list[str]) -> Cell:
    kind = cell.get("t", "n")
    if kind == "inlineStr":
        return _text(cell.find("m:is", _NS))
    value = cell.find("m:v", _NS)
    if value is None or value.text is None:
        return None
    if kind == "s":
        return shared[int(value.text)]
    if kind in ("str", "e"):
        return value.text
    if kind == "b":
        return value.text == "1"
    return float(value.text)


def _sheet_cells(sheet: ElementTree.Element, shared: list[str]) -> dict[int, dict[int, Cell]]:
    """{row number: {column index: value}} of a parsed worksheet."""
    rows: dict[int, dict[int, Cell]] = {}
    for row_pos, row in enumerate(sheet.iterfind("m:sheetData/m:row", _NS), start=1):
        cells = rows.setdefault(int(row.get("r", row_pos)), {})
        for col_pos, cell in enumerate(row.findall("m:c", _NS)):
            match = _CELL_REF.match(cell.get("r", ""))
            cells[column_index(match.group(1)) if match else col_pos] = _cell_value(cell, shared)
    return rows


def read_xlsx_rows(path: str | Path) -> list[list[Cell]]:
    """Rows (1-based row r is element r-1) of the active sheet; missing cells are None.

    Raises UserError naming the file when it is not a readable .xlsx workbook.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            shared: list[str] = []
            if "xl/sharedStrings.xml" in names:
                root = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
                shared = [_text(si) for si in root.findall("m:si", _NS)]
            sheet = ElementTree.fromstring(archive.read(_active_sheet_part(archive)))
    except (zipfile.BadZipFile, KeyError, ValueError, ElementTree.ParseError, OSError) as err:
        raise UserError(f"cannot read spreadsheet {path} (expected an .xlsx workbook): {err}") from None
    try:
        rows = _sheet_cells(sheet, shared)
    except (ValueError, IndexError) as err:
        raise UserError(f"cannot read spreadsheet {path}: malformed cell ({err})") from None
    if not rows:
        return []
    table: list[list[Cell]] = []
    for r in range(1, max(rows) + 1):
        cells = rows.get(r, {})
        width = max(cells) + 1 if cells else 0
        table.append([cells.get(c) for c in range(width)])
    return table
