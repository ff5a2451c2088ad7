"""Every install line names this project's distribution and extras that it has.

The distribution is not called like the package it installs (``tokenbucket`` on the
package index is an unrelated project): a ``pip install tokenbucket`` left in the docs, an
error message or a self-referencing extra would install that project instead.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from tests.docs._markdown import ROOT, documents

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# `pip install NAME`, `pip install 'NAME[a,b]'`, ... for a NAME that starts like the package
_INSTALL = re.compile(r"pip install\s+(?:-\S+\s+)*['\"]?(tokenbucket[\w.-]*)(?:\[([^\]]*)\])?")
# a requirement of the project itself: "NAME[a,b]"
_REQUIREMENT = re.compile(r"^(tokenbucket[\w.-]*)\s*(?:\[([^\]]*)\])?")


def _project() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def _extras(listed: str | None) -> set[str]:
    return {e.strip() for e in (listed or "").split(",") if e.strip()}


def _sources() -> list[str]:
    files = [
        *documents(),
        *sorted((ROOT / "src").rglob("*.py")),
        *sorted((ROOT / "examples").rglob("*.py")),
        *sorted((ROOT / "benchmarks").rglob("*.py")),
        *sorted((ROOT / "benchmarks").rglob("*.md")),
    ]
    return [str(path.relative_to(ROOT)) for path in files]


def test_install_lines_name_the_distribution_and_its_extras() -> None:
    project = _project()
    extras = set(project["optional-dependencies"])
    found = 0
    for name in _sources():
        text = (ROOT / name).read_text(encoding="utf-8")
        for match in _INSTALL.finditer(text):
            found += 1
            where = f"{name}: {match.group(0)!r}"
            assert match.group(1) == project["name"], f"{where} is not {project['name']}"
            assert _extras(match.group(2)) <= extras, f"{where} names an unknown extra"
    assert found >= 3, "the docs lost their install lines"


def test_the_docs_home_page_shows_the_install_line() -> None:
    top = "\n".join((ROOT / "docs" / "index.md").read_text(encoding="utf-8").splitlines()[:15])
    assert re.search(rf"^pip install {re.escape(_project()['name'])}(\s|$)", top, re.MULTILINE)


def test_extras_that_name_the_project_name_it_by_its_distribution() -> None:
    project = _project()
    extras = set(project["optional-dependencies"])
    own = 0
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            match = _REQUIREMENT.match(requirement)
            if match is None:
                continue
            own += 1
            assert match.group(1) == project["name"], f"extra {extra!r}: {requirement!r}"
            assert _extras(match.group(2)) <= extras - {extra}, f"extra {extra!r}: {requirement!r}"
    assert own >= 1
