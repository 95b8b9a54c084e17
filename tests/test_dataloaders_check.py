"""`python -m dataloaders check`: counts, label range, problems named, exit status, JSON form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataloaders.__main__ import main
from tools.dataset_fixtures import MAKERS, make_kadid, make_koniq, make_ref_pool, make_tid2013, write_image

REPO = Path(__file__).resolve().parents[1]
KEYS = {"dataset", "references", "images", "label_min", "label_max", "missing", "unreadable", "usable",
        "error"}


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    status = main(["check", *args, "--json"])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_check_counts_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    entries = MAKERS[name](tmp_path)
    status, report = run_json(capsys, "--dataset", name, "--root", str(tmp_path), "--patch_size", "32")
    assert status == 0 and report["usable"] and KEYS <= set(report)
    assert report["dataset"] == name and report["images"] == len(entries)
    synthetic = entries[0].hq is not None
    assert report["references"] == (len({e.content for e in entries}) if synthetic else 0)
    labels = [e.label for e in entries]
    assert (report["label_min"], report["label_max"]) == (min(labels), max(labels))
    assert report["missing"] == [] and report["unreadable"] == []


def test_check_names_missing_unreadable_and_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tid2013(tmp_path, n_refs=2)
    missing = tmp_path / "reference_images/i25.bmp"
    missing.unlink()
    broken = tmp_path / "distorted_images/i01_01_2.bmp"
    broken.write_bytes(b"BM not really")
    status, report = run_json(capsys, "--dataset", "tid2013", "--root", str(tmp_path), "--patch_size", "50")
    assert status == 1 and not report["usable"]
    assert report["missing"] == [str(missing.with_name("I25.BMP"))]  # the name looked for (any case)
    assert [u["path"] for u in report["unreadable"]] == [str(broken)]
    assert {t["size"] for t in report["too_small"]} == {"64x48"}
    status = main(["check", "--dataset", "tid2013", "--root", str(tmp_path), "--patch_size", "50"])
    text = capsys.readouterr().out
    assert status == 1
    assert "missing: " in text and f"unreadable: cannot read image {broken}" in text
    assert "too small: " in text and "result       NOT usable" in text


def test_check_reference_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_koniq(tmp_path / "k", n=2)
    make_ref_pool(tmp_path / "pool", n=2)
    args = ["--dataset", "koniq-10k", "--root", str(tmp_path / "k"), "--patch_size", "32"]
    status, report = run_json(capsys, *args, "--ref_root", str(tmp_path / "pool"))
    assert status == 0 and report["ref_pool"]["images"] == 2
    status, report = run_json(capsys, *args, "--ref_root", str(tmp_path / "none"))
    assert status == 1 and "reference image folder not found" in report["ref_pool"]["error"]


def test_check_quick_mode_reads_headers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_kadid(tmp_path, n_refs=1, n_types=1, n_levels=1)
    status, report = run_json(capsys, "--dataset", "kadid10k", "--root", str(tmp_path), "--patch_size", "32",
                              "--quick")
    assert status == 0 and report["images"] == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "dataloaders", "check", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_root_and_label_file_without_traceback(tmp_path: Path) -> None:
    result = _cli("--dataset", "live", "--root", str(tmp_path / "LIVE"))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"dataset folder not found: {tmp_path / 'LIVE'}" in result.stdout
    assert "refimgs/<name>.bmp" in result.stdout  # the expected layout is shown
    make_kadid(tmp_path / "k", n_refs=1, n_types=1, n_levels=1)
    (tmp_path / "k/dmos.csv").unlink()
    result = _cli("--dataset", "kadid10k", "--root", str(tmp_path / "k"), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"label file not found: {tmp_path / 'k/dmos.csv'}" in report["error"]
    assert report["images"] == 0 and report["missing"] == []


def test_check_quick_reads_headers_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file whose header is intact but whose pixels are cut off passes --quick and fails the full check."""
    make_kadid(tmp_path, n_refs=1, n_types=1, n_levels=2)
    truncated = tmp_path / "images/I01_01_02.png"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    args = ["--dataset", "kadid10k", "--root", str(tmp_path), "--patch_size", "32"]
    status, report = run_json(capsys, *args, "--quick")
    assert status == 0 and report["usable"] and report["unreadable"] == []
    status, report = run_json(capsys, *args)
    assert status == 1 and [u["path"] for u in report["unreadable"]] == [str(truncated)]


def test_check_reports_lq_and_reference_of_other_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_kadid(tmp_path, n_refs=2, n_types=1, n_levels=1)
    odd = write_image(tmp_path / "images/I02_01_01.png", (60, 48))  # its reference I02.png is 64x48
    args = ["--dataset", "kadid10k", "--root", str(tmp_path), "--patch_size", "32"]
    status, report = run_json(capsys, *args)
    assert status == 1 and not report["usable"]
    assert report["size_mismatch"] == [{"lq": str(odd), "hq": str(tmp_path / "images/I02.png")}]
    assert report["missing"] == report["unreadable"] == report["too_small"] == []
    status = main(["check", *args])
    text = capsys.readouterr().out
    assert status == 1 and f"size mismatch: {odd} vs its reference {tmp_path / 'images/I02.png'}" in text
