"""`python -m dataloaders check`: is a dataset on disk complete and readable before anyone trains on it?"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import cannot_read
from dataloaders.base import duplicate_labels, duplicate_line
from dataloaders.image_io import image_size, list_reference_images, load_rgb
from dataloaders.loaders import dataset_class


def _inspect_images(paths: list[Path], patch_size: int, decode: bool, check_size: bool,
                    report: dict[str, Any], progress: bool) -> dict[Path, tuple[int, int]]:
    """Record missing / unreadable / too-small files of `paths` in `report`; return the sizes read."""
    sizes: dict[Path, tuple[int, int]] = {}
    for n, path in enumerate(paths, start=1):
        if progress and n % 500 == 0:
            print(f"  checked {n}/{len(paths)} files", file=sys.stderr)
        try:
            if not path.is_file():
                report["missing"].append(str(path))
                continue
            size = load_rgb(path).size if decode else image_size(path)
        except UserError as err:
            report["unreadable"].append({"path": str(path), "error": str(err)})
            continue
        except OSError as err:  # its folder cannot be searched
            report["unreadable"].append({"path": str(path), "error": str(cannot_read(err))})
            continue
        sizes[path] = size
        if check_size and min(size) < patch_size:
            report["too_small"].append({"path": str(path), "size": f"{size[0]}x{size[1]}"})
    return sizes


def image_problems(paths: list[Path], patch_size: int,
                   check_size: bool) -> tuple[list[str], dict[Path, tuple[int, int]]]:
    """Header check of `paths` (no decoding): the problem lines as `check` prints them, and the sizes read."""
    report: dict[str, Any] = {"missing": [], "unreadable": [], "too_small": [], "patch_size": patch_size}
    sizes = _inspect_images(list(paths), patch_size, False, check_size, report, False)
    return _problem_lines(report), sizes


def check_dataset(name: str, root: str | os.PathLike, ref_root: str | os.PathLike | None = None, *,
                  patch_size: int = 224, upscale: bool = False, decode: bool = True,
                  progress: bool = False) -> dict[str, Any]:
    """A report (JSON-serialisable dict) on dataset `name` under `root` and the optional reference pool.

    Keys: dataset, root, higher_is_better, references, images, label_min, label_max, missing,
    unreadable, too_small, size_mismatch, duplicates, ref_pool, error, usable. `decode=False` only reads
    headers. An image listed twice with different labels makes the dataset unusable.
    """
    cls = dataset_class(name)
    report: dict[str, Any] = {
        "dataset": name, "root": str(root), "higher_is_better": cls.higher_is_better, "references": 0,
        "images": 0, "label_min": None, "label_max": None, "missing": [], "unreadable": [], "too_small": [],
        "size_mismatch": [], "duplicates": [], "patch_size": patch_size, "ref_pool": None, "error": None,
        "usable": False,
    }
    try:
        samples, num_contents = cls.read_index_checked(Path(root))
    except UserError as err:
        report["error"] = str(err)
        samples, num_contents = [], 0
    if samples:
        labels = [s.label for s in samples]
        report.update(references=num_contents if cls.has_aligned_reference else 0, images=len(samples),
                      label_min=min(labels), label_max=max(labels), duplicates=duplicate_labels(samples))
        files = list(dict.fromkeys(p for s in samples for p in (s.lq_path, s.hq_path) if p is not None))
        check_size = not upscale and cls.resize_to is None
        sizes = _inspect_images(files, patch_size, decode, check_size, report, progress)
        for s in samples:
            if s.hq_path in sizes and s.lq_path in sizes and sizes[s.hq_path] != sizes[s.lq_path]:
                report["size_mismatch"].append({"lq": str(s.lq_path), "hq": str(s.hq_path)})
    if ref_root is not None:
        pool: dict[str, Any] = {"folder": str(ref_root), "images": 0, "missing": [], "unreadable": [],
                                "too_small": [], "error": None}
        try:
            refs = list_reference_images(ref_root)
            pool["images"] = len(refs)
            _inspect_images(refs, patch_size, decode, not upscale, pool, progress)
        except UserError as err:
            pool["error"] = str(err)
        report["ref_pool"] = pool
    problems = [report[k] for k in ("error", "missing", "unreadable", "too_small", "size_mismatch")]
    problems.append([d for d in report["duplicates"] if d["conflicting"]])
    if report["ref_pool"] is not None:
        problems += [report["ref_pool"][k] for k in ("error", "unreadable", "too_small")]
    report["usable"] = bool(samples) and not any(problems)
    return report


def _problem_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"  missing: {p}" for p in report["missing"]]
    lines += [f"  unreadable: {u['error']}" for u in report["unreadable"]]
    lines += [f"  too small: {t['path']} ({t['size']}, patch {report.get('patch_size', '?')})"
              for t in report["too_small"]]
    lines += [f"  size mismatch: {m['lq']} vs its reference {m['hq']}"
              for m in report.get("size_mismatch", [])]
    lines += [duplicate_line(d) for d in report.get("duplicates", [])]
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of a check_dataset report."""
    direction = "higher is better" if report["higher_is_better"] else "lower is better"
    out = [f"dataset      {report['dataset']} (labels: {direction})", f"root         {report['root']}"]
    if report["error"]:
        out.append(f"error        {report['error']}")
    if report["images"]:
        out += [f"references   {report['references']}", f"images       {report['images']}",
                f"labels       {report['label_min']:.4g} .. {report['label_max']:.4g}",
                f"missing      {len(report['missing'])}", f"unreadable   {len(report['unreadable'])}",
                f"too small    {len(report['too_small'])} (patch {report['patch_size']})",
                f"size mismatch {len(report['size_mismatch'])}",
                f"duplicates   {len(report['duplicates'])} "
                f"({sum(d['conflicting'] for d in report['duplicates'])} with conflicting labels)"]
        out += _problem_lines(report)
    pool = report["ref_pool"]
    if pool is not None:
        if pool["error"]:
            out.append(f"ref pool     error: {pool['error']}")
        else:
            out.append(f"ref pool     {pool['folder']}: {pool['images']} images, "
                       f"{len(pool['unreadable'])} unreadable, {len(pool['too_small'])} too small")
            out += _problem_lines({**pool, "patch_size": report["patch_size"]})
    out.append(f"result       {'usable' if report['usable'] else 'NOT usable'}")
    return "\n".join(out)


def run_check(name: str, root: str | os.PathLike, ref_root: str | os.PathLike | None = None, *,
              patch_size: int = 224, upscale: bool = False, quick: bool = False, as_json: bool = False) -> int:
    """Check dataset `name` under `root` (and the reference pool `ref_root`), print the report (as JSON with
    `as_json`; headers only with `quick`) and return the exit status: 0 usable, 1 not."""
    report = check_dataset(name, root, ref_root, patch_size=patch_size, upscale=upscale, decode=not quick,
                           progress=sys.stderr.isatty())
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["usable"] else 1
