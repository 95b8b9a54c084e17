"""The documentation: README.md stays short, every relative link in README.md and docs/*.md resolves (anchors to a
heading of the page), and the README's single-image command for the demo's student is the one the demo builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import demo

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_slug_matches_github():
    assert slug("Run folders, resume and overwrite") == "run-folders-resume-and-overwrite"
    assert slug("Export to the authors' format") == "export-to-the-authors-format"
    assert slug("Multi-GPU (torchrun)") == "multi-gpu-torchrun"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.name}: {broken}"


def test_readme_is_short_and_leads_to_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    assert set(PAGES[1:]) <= linked  # every docs page is found from the README


def test_readme_scores_with_the_demo_student():
    """The README's command is the one the demo prints (files the demo leaves, not placeholders)."""
    command = ".venv/bin/" + demo.single_image_command(Path("demo_output"), Path("demo_data"))
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert command in lines
    assert "demo_output/student/models/last.pth" in command and "test_DistillationIQA_single.py" in command
    assert str(demo.STUDENT_CHECKPOINT) == "student/models/last.pth"
