"""Find the fenced code blocks of a Markdown file (no Markdown library needed), and run
Python on what the documents hold."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run this interpreter with ``args`` (at most five minutes): its exit code, and its
    stdout followed by its stderr."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


# ```python title="limits.toml"   (backticks or tildes, three or more, maybe indented)
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_TITLE = re.compile(r"""\btitle=(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>\S+))""")
_NOT_RUN = re.compile(r"^<!--\s*not-run\s*(?::\s*(?P<reason>.*?))?\s*-->$")
# Spellings of Python that the example test would not recognise: refused, not skipped.
PYTHON_ALIASES = frozenset({"py", "py3", "python3", "pycon", "pyi", "ipython", "python-repl"})


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    path: Path  # the Markdown file
    line: int  # 1-based line of the first line of code (after the opening fence)
    lang: str  # the first word of the info string, lower-cased ("" when none)
    title: str | None  # the block's title="..." attribute
    code: str  # the code, dedented by the fence's indentation
    not_run: str | None  # the reason given by a <!-- not-run: reason --> marker
    marker: str | None  # the marker's text, reason or not (to check it has one)
    closed: bool  # False when the file ended before the closing fence

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of ``path``, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        info = opening["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = lines[j].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        marker = _marker_before(lines, i)
        reason = None
        if marker is not None:
            match = _NOT_RUN.match(marker)
            reason = (match["reason"] or "").strip() if match else ""
        title = _TITLE.search(info)
        found.append(
            Block(
                path=path,
                line=i + 2,
                lang=info.split(maxsplit=1)[0].lstrip(".{").lower() if info else "",
                title=(title["dq"] or title["sq"] or title["bare"]) if title else None,
                code=textwrap.dedent("\n".join(body)) + "\n",
                not_run=reason or None,
                marker=marker,
                closed=j < len(lines),
            )
        )
        i = j + 1
    return found


def _marker_before(lines: list[str], fence: int) -> str | None:
    """The ``<!-- not-run ... -->`` comment on the last non-blank line before a fence."""
    k = fence - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    if k >= 0 and "not-run" in lines[k] and lines[k].strip().startswith("<!--"):
        return lines[k].strip()
    return None


def documents() -> list[Path]:
    """The Markdown files whose examples must run: README.md and every page in docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
