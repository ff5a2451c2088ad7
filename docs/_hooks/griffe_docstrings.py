"""Griffe extension: show the package's reST-flavoured docstrings as Markdown.

The docstrings follow Google style (``Args:``, ``Raises:``, ``Attributes:``) but keep a
few reStructuredText habits that Markdown would render literally. Before mkdocstrings
renders them, this extension rewrites, outside fenced code:

- ``:class:`Rate```, ``:meth:`Limiter.acquire```, ``:func:`~tokenbucket.per_minute```
  (any Sphinx role) into a cross-reference to the API reference when the target is
  documented there, else into inline code (never a dangling link, so the strict build
  cannot fail on one);
- a paragraph ending in ``::`` followed by an indented block into a paragraph ending in
  ``:`` followed by a fenced block (``toml`` when it looks like TOML, else ``python``);
- doctest lines (``>>>`` and their continuation and output lines) into a ``pycon``
  fenced block, without ``# doctest:`` directives.

The source files are not changed; only what the site shows.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Callable

import griffe

Anchor = Callable[[str], str | None]

_PACKAGE = "tokenbucket"
# The lazily imported Redis names are documented under their module (see reference.md).
_REDIS: dict[str, set[str]] = {
    "RedisBackend": {"ping", "aclose", "key"},
    "BackendError": set(),
    "BackendUnavailableError": set(),
}
_ROLE = re.compile(
    r":(?:class|meth|func|exc|attr|mod|data|obj):`(?P<tilde>~?)(?P<target>[\w.]+)(?:\(\))?`"
)
_FENCE = re.compile(r"^\s*(```|~~~)")
_DOCTEST_FLAG = re.compile(r"\s*#\s*doctest:.*$")


class MarkdownDocstrings(griffe.Extension):
    """Rewrite every docstring of the package once its object tree is complete."""

    def on_package(
        self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: object
    ) -> None:
        if pkg.path != _PACKAGE:
            return
        public = {str(name) for name in pkg.exports or ()}
        for obj in _walk(pkg):
            if obj.docstring is not None:
                link = functools.partial(_anchor, owner=obj, pkg=pkg, public=public)
                obj.docstring.value = convert(obj.docstring.value, link)


def _walk(obj: griffe.Object | griffe.Alias) -> list[griffe.Object]:
    """Every object defined in the package (aliases are skipped: they share docstrings)."""
    if isinstance(obj, griffe.Alias):
        return []
    found = [obj]
    for member in obj.members.values():
        found.extend(_walk(member))
    return found


def _anchor(target: str, owner: griffe.Object, pkg: griffe.Module, public: set[str]) -> str | None:
    """The API reference's anchor for a role's target, or ``None`` if it has none."""
    name = target.removeprefix(f"{_PACKAGE}.")
    candidates = [name]
    cls = owner if owner.is_class else owner.parent
    if cls is not None and cls.is_class and cls.name in public:
        candidates.append(f"{cls.name}.{name}")  # :meth:`settle` inside Lease
    for candidate in candidates:
        head, _, rest = candidate.partition(".")
        if head in _REDIS and (not rest or rest in _REDIS[head]):
            return f"{_PACKAGE}._redis.{candidate}"
        if head in public and (not rest or not rest.startswith("_")):
            try:
                pkg[candidate]
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            return f"{_PACKAGE}.{candidate}"
    return None


def convert(text: str, anchor: Anchor) -> str:
    """The Markdown for one docstring; ``anchor(target)`` gives a role's link target."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    fenced = False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            fenced = not fenced
            out.append(line)
            i += 1
            continue
        if fenced:
            out.append(line)
            i += 1
            continue
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(_DOCTEST_FLAG.sub("", lines[i][len(indent) :]))
                i += 1
            out.extend([f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"])
            continue
        if line.rstrip().endswith("::") and _indented_block_follows(lines, i):
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(_roles(head + ":", anchor))
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            base = len(line) - len(line.lstrip())
            block = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base
            ):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            code = textwrap.dedent("\n".join(block)).splitlines()
            first = next((c for c in code if c.strip()), "")
            lang = "toml" if first.lstrip().startswith("[") else "python"
            pad = " " * base
            out.extend(["", f"{pad}```{lang}", *(pad + c if c else "" for c in code), f"{pad}```"])
            out.append("")
            continue
        out.append(_roles(line, anchor))
        i += 1
    return "\n".join(out)


def _indented_block_follows(lines: list[str], i: int) -> bool:
    base = len(lines[i]) - len(lines[i].lstrip())
    for nxt in lines[i + 1 :]:
        if nxt.strip():
            return len(nxt) - len(nxt.lstrip()) > base
    return False


def _roles(line: str, anchor: Anchor) -> str:
    def replace(match: re.Match[str]) -> str:
        target = match["target"]
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        if match.group(0).startswith((":meth:", ":func:")):
            shown += "()"
        where = anchor(target)
        return f"[`{shown}`][{where}]" if where else f"`{shown}`"

    return _ROLE.sub(replace, line)
