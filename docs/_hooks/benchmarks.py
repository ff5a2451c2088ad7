"""MkDocs hook: fill the benchmarks page from the files the benchmark suite keeps.

A page may hold three kinds of marker, each an HTML comment on a line of its own:

``<!-- benchmark-report: PATH -->``
    Replaced by the whole Markdown file ``docs/PATH`` (the report of a full run), its
    headings moved one level down (its title becomes a section of the page), its images
    and links rewritten to resolve from the page (or reduced to their text when their
    target does not exist). A note when the
    file does not exist yet.

``<!-- benchmark-tables: PATTERN -->``
    Replaced by every Markdown table of the files matching ``PATTERN`` (a glob relative
    to the repository root, optionally ending in ``#Heading`` to take only the tables
    under that heading), each under the heading it sits under in its file. Links in the
    tables (and images in them) are reduced to their text, so a file outside ``docs/``
    cannot break the strict build with a relative link. A pattern matching no file adds
    nothing.

``<!-- benchmark-plots: DIR -->``
    Replaced by every image (``.png``, ``.svg``) in ``docs/DIR`` that the page does not
    show yet, in name order, or by a note that there is none. Only images that exist are
    linked.

So the page always shows the suite's own documents as they are, and a full run's report
and plots appear once they are committed, with no edit to the page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
_TABLES = re.compile(r"^<!-- benchmark-tables: (?P<pattern>[^#\s]+)(?:#(?P<heading>[^>]+?))? -->$")
_PLOTS = re.compile(r"^<!-- benchmark-plots: (?P<dir>\S+) -->$")
_REPORT = re.compile(r"^<!-- benchmark-report: (?P<path>\S+) -->$")
_HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)]+)\)")
_IMAGE_SUFFIXES = (".png", ".svg")


def on_page_markdown(markdown: str, /, *, page: Any, config: Any, files: Any) -> str:
    """Expand the markers of one page (MkDocs calls this for every page)."""
    docs_dir = Path(config["docs_dir"])
    page_dir = Path(page.file.src_uri).parent
    shown: set[Path] = set()  # images already on the page
    lines: list[str] = []
    for line in markdown.splitlines():
        stripped = line.strip()
        tables = _TABLES.match(stripped)
        plots = _PLOTS.match(stripped)
        report = _REPORT.match(stripped)
        if tables:
            lines.extend(_tables(tables["pattern"], tables["heading"]))
        elif report:
            lines.extend(_report(docs_dir, report["path"], page_dir, shown))
        elif plots:
            lines.extend(_plots(docs_dir, plots["dir"], page_dir, shown))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _from_page(target: Path, page_dir: Path) -> str:
    """``target`` (relative to docs/) as a link from a page in ``page_dir``."""
    return Path(*([".."] * len(page_dir.parts)), target).as_posix()


def _report(docs_dir: Path, name: str, page_dir: Path, shown: set[Path]) -> list[str]:
    path = docs_dir / name
    if not path.is_file():
        return [
            '!!! note "No full run committed yet"',
            "    `python benchmarks/run_all.py --out docs/benchmarks` writes the report and",
            f"    its plots; once `docs/{name}` is committed, it appears here.",
            "",
        ]
    folder = Path(name).parent

    def relink(match: re.Match[str]) -> str:
        target = match["target"].strip()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):  # a URL or an anchor: keep it
            return match.group(0)
        resolved = Path(os.path.normpath(folder / target))
        if not (docs_dir / resolved).is_file():
            return match["text"]
        if match.group(0).startswith("!"):
            shown.add(resolved)
        prefix = "!" if match.group(0).startswith("!") else ""
        return f"{prefix}[{match['text']}]({_from_page(resolved, page_dir)})"

    out: list[str] = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading:
            level = min(len(heading["hashes"]) + 1, 6)
            out.append(f"{'#' * level} {heading['text']}")
        else:
            out.append(line if fenced else _LINK.sub(relink, line))
    return [*out, ""]


def _tables(pattern: str, heading: str | None) -> list[str]:
    out: list[str] = []
    for path in sorted(_ROOT.glob(pattern)):
        out.extend(_tables_of(path.read_text(encoding="utf-8"), heading))
    return out


def _tables_of(text: str, only_under: str | None) -> list[str]:
    """The tables of one Markdown file, each preceded by the heading it sits under."""
    out: list[str] = []
    titles: list[tuple[int, str]] = []  # the headings enclosing the current line
    shown: str | None = None
    table: list[str] = []
    fenced = False

    def flush() -> None:
        nonlocal shown
        if not table:
            return
        inside = only_under is None or any(t == only_under for _, t in titles)
        if inside:
            title = titles[-1][1] if titles else None
            if title is not None and title != shown and title != only_under:
                out.extend([f"### {title}", ""])
                shown = title
            out.extend([*table, ""])
        table.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            flush()
            level = len(match["hashes"])
            titles = [(lv, t) for lv, t in titles if lv < level]
            titles.append((level, match["text"]))
        elif not fenced and line.lstrip().startswith("|"):
            table.append(_LINK.sub(lambda m: m["text"], line.strip()))
        else:
            flush()
    flush()
    return out


def _plots(docs_dir: Path, folder: str, page_dir: Path, shown: set[Path]) -> list[str]:
    where = docs_dir / folder
    images = sorted(
        p.relative_to(docs_dir)
        for p in where.glob("*")
        if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )
    if not images:
        return [
            '!!! note "Plots"',
            f"    No plots are committed yet. A full run's PNG plots go in `docs/{folder}/`",
            "    and appear here, in name order.",
            "",
        ]
    new = [image for image in images if image not in shown]
    if not new:
        return []  # every plot of the run is shown with its report
    out: list[str] = []
    for image in new:
        caption = image.stem.replace("_", " ").replace("-", " ")
        out.extend([f"![{caption}]({_from_page(image, page_dir)})", ""])
        shown.add(image)
    return out
