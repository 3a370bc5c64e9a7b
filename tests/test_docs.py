"""The front page and docs/: the two commands are the ones that run, and every link and path they name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCED_BLOCK = re.compile(r"^```.*?^```", re.M | re.S)
RELATIVE_LINK = re.compile(r"\]\((?!https?:)([^)\s]+)\)")
# A path into the repository as the docs name it; one with a placeholder (`recipes/<model>/`, `{lora,qlora}`, `*`) is
# a pattern, not a file.
REPOSITORY_PATH = re.compile(r"(?<![\w./-])((?:recipes|scripts|spri_sft|tests|docs)/[\w./+-]*)(?![\w./+<{*-])")
MAIN_COMMAND = "bash scripts/setup.sh && .venv/bin/spri-sft run recipes/smollm2-135m-instruct/pipeline/spri.yaml"


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose = FENCED_BLOCK.sub("", page.read_text(encoding="utf-8"))
    return {github_anchor(match) for match in re.findall(r"^#+\s+(.*)$", prose, re.M)}


def test_the_readme_holds_the_main_command_and_its_recipe_exists():
    assert MAIN_COMMAND in README.read_text(encoding="utf-8").splitlines()
    assert (ROOT / "recipes/smollm2-135m-instruct/pipeline/spri.yaml").is_file()


def test_the_readme_holds_the_test_command_ci_runs_verbatim():
    ci_lines = [
        line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("bash scripts/setup.sh")
    ]
    assert len(ci_lines) == 1
    assert ci_lines[0] in README.read_text(encoding="utf-8").splitlines()


def test_the_readme_is_a_front_page_of_about_200_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    prose = FENCED_BLOCK.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in RELATIVE_LINK.findall(prose):
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists() or (fragment and fragment not in anchors(destination)):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)} links to what does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_repository_path_the_page_names_exists(page):
    named = {path.rstrip(".,;:") for path in REPOSITORY_PATH.findall(page.read_text(encoding="utf-8"))}
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == [], f"{page.relative_to(ROOT)} names paths the repository does not have"
