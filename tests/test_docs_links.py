"""Every markdown link from the README and docs to a .md file (and #anchor) resolves: the file exists and the anchor
is one of its headings (GitHub's rules: lower case, spaces to '-', punctuation dropped, '-1' for a repeat)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(path: Path) -> set[str]:
    found, counts, in_code = set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", re.sub(r"^#{1,6} ", "", line).strip().lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_every_link_between_the_pages_resolves():
    broken = []
    for page in PAGES:
        for m in re.finditer(r"\]\(([^)\s#]*?\.md)?(#[^)\s]+)?\)", page.read_text()):
            target, anchor = m.group(1), m.group(2)
            if not target and not anchor:
                continue
            dest = page.parent / target if target else page
            if not dest.is_file():
                broken.append(f"{page.relative_to(ROOT)}: no file {target}")
            elif anchor and anchor[1:] not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target or ''}{anchor} is no heading of {dest.name}")
    assert len(PAGES) >= 8 and not broken, broken
