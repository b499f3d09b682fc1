"""The documentation holds together: every relative link leads somewhere, every page has its twin.

The README is the first page and docs/ holds the rest, in English and Chinese kept in step. Files
move (the shared code became the package `fourways`), and a link to a moved file or a renamed
heading fails silently on GitHub; so every relative link in README*.md and docs/*.md must name an
existing file and, for a Markdown target, a heading that exists there (GitHub's anchor rule), and
each docs/X.md must have its docs/X.zh-CN.md, and the other way round. Fast: text only.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([*ROOT.glob("README*.md"), *(ROOT / "docs").glob("*.md")])
CHINESE_SUFFIX = ".zh-CN.md"

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks (links and headings there are not live)."""
    lines, in_fence = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, '-' for ' '."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on the page, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page):
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    return [
        target
        for line in prose_lines(page)
        for target in LINK.findall(line)
        if not EXTERNAL.match(target)
    ]


def broken_link(page: Path, target: str) -> str | None:
    """Why `target`, linked from `page`, leads nowhere; None when it leads to what it names."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{page.relative_to(ROOT)}: {target}: no file {path}"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} in {file.name}"
    return None


def test_the_pages_are_found() -> None:
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {"README.md", "README.zh-CN.md", "docs/package.md", "docs/testing.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    links = relative_links(page)
    broken = [reason for target in links if (reason := broken_link(page, target))]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_page_has_its_twin_in_the_other_language(page: Path) -> None:
    if page.name.endswith(CHINESE_SUFFIX):
        twin = page.with_name(page.name.removesuffix(CHINESE_SUFFIX) + ".md")
    else:
        twin = page.with_name(page.name.removesuffix(".md") + CHINESE_SUFFIX)
    assert twin.exists(), f"{page.relative_to(ROOT)} has no twin {twin.relative_to(ROOT)}"
    assert twin.name in {Path(target.partition("#")[0]).name for target in relative_links(page)}, (
        f"{page.relative_to(ROOT)} does not link to its twin {twin.name}"
    )


def test_github_anchor_rule() -> None:
    assert github_anchor("The comparison: `python compare.py`") == "the-comparison-python-comparepy"
    chinese = "DDP：从单设备到 N 个 GPU，再到两台机器"  # full-width punctuation dropped too
    assert github_anchor(chinese) == "ddp从单设备到-n-个-gpu再到两台机器"
    assert github_anchor('When the runners "agree"') == "when-the-runners-agree"


@pytest.mark.parametrize("page", ["package.md", "package.zh-CN.md"])
def test_the_package_map_names_every_module(page: str) -> None:
    """docs/package*.md maps the package, one row a module: a module added or moved without its
    row (or a row left for a module that went) fails here."""
    package = ROOT / "fourways"
    modules = {  # a subpackage's __init__.py is its bold row, `contract/`
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.name != "__init__.py" or p.parent == package
    }
    rows = set(re.findall(r"^\| `([\w/]+\.py)` \|", (ROOT / "docs" / page).read_text(), re.M))
    assert rows == modules, f"missing: {sorted(modules - rows)}, gone: {sorted(rows - modules)}"
