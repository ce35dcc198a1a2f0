"""Rewrite one generated section of a Markdown document (docs/results.md, docs/performance.md) in place."""

from __future__ import annotations

from pathlib import Path


def rewrite_section(document: Path, section: str, body: str) -> None:
    """Replace what lies between `<!-- {section}:begin -->` and `<!-- {section}:end -->` in `document`."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = document.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{document} has no {begin} ... {end} section to rewrite")
    before, rest = text.split(begin, 1)
    document.write_text(f"{before}{begin}\n{body}{end}{rest.split(end, 1)[1]}")
