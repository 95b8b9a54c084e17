"""`make gpu-check --dry-run`: the GPU check runs end to end on the CPU at tiny sizes and fills every field."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    report = gpu_check.main(["--dry-run", "--out", str(out)])
    return report, out


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, value


@pytest.mark.slow
def test_dry_run_fills_every_field_of_the_json(dry_run):
    report, out = dry_run
    written = json.loads((out / "gpu_check.json").read_text())
    assert written["dry_run"] is True and set(written["sections"]) == set("ABCDEFG")
    empty = [key for key, value in _leaves(written) if value is None or value == "" or value == {}]
    assert not empty
    errors = [f"{key}: {value}" for key, value in _leaves(written) if isinstance(value, str)
              and value.startswith(("error", "skipped: the section"))]
    assert not errors
    b, f = written["sections"]["B"], written["sections"]["F"]
    assert b["teacher.ok"] and b["teacher_resume.ok"]  # the real script under torchrun, and its --resume
    assert "epoch 1" in b["teacher_resume.detail"]  # the resumed run trained its second epoch
    assert written["sections"]["D"]["identical_runs_max_diff_deterministic"] == 0.0
    assert f["teacher.steps_per_s"] > 0 and f["speedup_teacher_training"] > 0
    assert written["sections"]["A"]["cuda"] == "not applicable on cpu"


@pytest.mark.slow
def test_dry_run_writes_the_markdown_table(dry_run):
    report, out = dry_run
    text = (out / "gpu_check.md").read_text()
    assert text.startswith("# gpu_check (dry run, cpu")
    assert "| section | measurement | value |" in text
    for key in ("A. environment | torch", "B. torchrun runs of the real scripts | teacher_resume.ok | True",
                "F. throughput | teacher.share_of_backbone", "G. pytest -m cuda | pytest_cuda"):
        assert key in text
