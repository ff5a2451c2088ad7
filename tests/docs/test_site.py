"""The documentation site builds with ``mkdocs build --strict`` (any warning fails it).

The build needs the ``docs`` extra (``pip install -e '.[docs]'``, part of ``dev``).
Without it the test is skipped on a developer's machine and fails when the environment
variable ``CI`` is set, so CI cannot pass without building the site.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import types
from typing import TYPE_CHECKING, Any

import pytest

from tests.docs._markdown import ROOT, run_python

if TYPE_CHECKING:
    from pathlib import Path

# with ruff (or Black), mkdocstrings-python formats long signatures on several lines
_DOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "ruff")


def _missing_tools() -> list[str]:
    missing = []
    for name in _DOCS_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def _require_docs_tools() -> None:
    missing = _missing_tools()
    if not missing:
        return
    reason = f"the docs extra is not installed ({', '.join(missing)}): pip install -e '.[docs]'"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


def test_site_builds_strictly(tmp_path: Path) -> None:
    _require_docs_tools()
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    returncode, output = run_python(
        *("-m", "mkdocs", "build", "--strict"),
        *("--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)),
        cwd=ROOT,
        env=env,
    )
    assert returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert "WARNING" not in output, output
    assert "Formatting signatures requires" not in output, output  # neither Black nor Ruff
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for anchor in (
        "tokenbucket.TokenBucket.acquire",
        "tokenbucket.Limiter.acquire",
        "tokenbucket.Lease.settle",
        "tokenbucket.rate_limited",
    ):
        assert f'id="{anchor}"' in reference, f"the API reference lacks {anchor}"
    # a long signature is formatted on several lines, one parameter a line
    text = html.unescape(re.sub(r"<[^>]+>", "", reference))
    assert "\nLimiter(\n    limits: Mapping[" in text, "Limiter's signature is on one line"
    assert (site / "benchmarks" / "index.html").is_file()


# -- the hook that fills the benchmarks page ---------------------------------------------


def _hook() -> Any:
    path = ROOT / "docs" / "_hooks" / "benchmarks.py"
    spec = importlib.util.spec_from_file_location("docs_benchmarks_hook", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _render(hook: Any, markdown: str, docs_dir: Path, src_uri: str = "benchmarks.md") -> str:
    page = types.SimpleNamespace(file=types.SimpleNamespace(src_uri=src_uri))
    result: str = hook.on_page_markdown(
        markdown, page=page, config={"docs_dir": str(docs_dir)}, files=None
    )
    return result


def test_benchmark_plots_are_linked_only_when_they_exist(tmp_path: Path) -> None:
    hook = _hook()
    (tmp_path / "benchmarks").mkdir()
    empty = _render(hook, "<!-- benchmark-plots: benchmarks -->\n", tmp_path)
    assert "![" not in empty
    assert "No plots are committed yet" in empty

    for name in ("2-saturation.png", "1-admitted_over_time.svg", "notes.txt"):
        (tmp_path / "benchmarks" / name).write_bytes(b"")
    shown = _render(hook, "<!-- benchmark-plots: benchmarks -->\n", tmp_path)
    assert shown.splitlines()[0] == "![1 admitted over time](benchmarks/1-admitted_over_time.svg)"
    assert "![2 saturation](benchmarks/2-saturation.png)" in shown
    assert "notes.txt" not in shown
    nested = _render(hook, "<!-- benchmark-plots: benchmarks -->\n", tmp_path, "a/b.md")
    assert "(../benchmarks/2-saturation.png)" in nested


def test_a_benchmark_report_is_embedded_with_its_own_plots(tmp_path: Path) -> None:
    hook = _hook()
    page = "<!-- benchmark-report: benchmarks/report.md -->\n<!-- benchmark-plots: benchmarks -->\n"
    missing = _render(hook, page, tmp_path)
    assert "No full run committed yet" in missing
    assert "No plots are committed yet" in missing

    (tmp_path / "benchmarks").mkdir()
    for name in ("cpu.png", "extra.png"):
        (tmp_path / "benchmarks" / name).write_bytes(b"")
    (tmp_path / "benchmarks" / "report.md").write_text(
        "# Benchmarks\n\nRun of today.\n\n## CPU\n\n| a |\n|---|\n| 1 |\n\n"
        "![cpu](cpu.png) ![gone](gone.png) [method](../../benchmarks/README.md) "
        "[peer](https://pypi.org/project/aiolimiter/)\n\n```\n# not a heading\n```\n",
        encoding="utf-8",
    )
    rendered = _render(hook, page, tmp_path).splitlines()
    assert rendered[:3] == ["## Benchmarks", "", "Run of today."]
    assert "### CPU" in rendered
    assert "# not a heading" in rendered
    assert (
        "![cpu](benchmarks/cpu.png) gone method [peer](https://pypi.org/project/aiolimiter/)"
        in rendered
    )
    assert "![extra](benchmarks/extra.png)" in rendered  # not in the report: under Plots
    assert sum("benchmarks/cpu.png" in line for line in rendered) == 1  # shown once


def test_benchmark_tables_are_taken_with_their_headings() -> None:
    hook = _hook()
    text = (
        "# Title\n\nIntro.\n\n## Results\n\n"
        "| a | b |\n|---|---|\n| [x](other.md) | ![2](p.png) |\n\n"
        "### Detail\n\n| c |\n|---|\n| 3 |\n\n```\n| not | a table |\n```\n\n## Other\n\n| d |\n"
    )
    # The Results section: its own table, then its subsection's, under a heading.
    results = ["| a | b |", "|---|---|", "| x | 2 |", ""]
    results += ["### Detail", "", "| c |", "|---|", "| 3 |", ""]
    assert hook._tables_of(text, None) == [
        "### Results",
        "",
        *results,
        "### Other",
        "",
        "| d |",
        "",
    ]
    assert hook._tables_of(text, "Results") == results


def test_the_benchmarks_page_leads_with_a_summary_and_folds_the_tables() -> None:
    hook = _hook()
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    rendered = _render(hook, page, ROOT / "docs")
    assert "<!-- benchmark-" not in rendered
    if not (ROOT / "docs" / "benchmarks" / "report.md").is_file():
        assert "No full run committed yet" in rendered
        return
    summary, rest = rendered.split("### Summary", 1)[1].split("\n### ", 1)
    assert any(line.startswith("|") for line in summary.splitlines()), "no table in the summary"
    assert "![" in summary, "no plot in the summary"
    folded = 0  # the tables after the summary are all inside <details> blocks
    for line in rest.splitlines():
        folded += line.startswith("<details") - line.startswith("</details>")
        assert folded or not line.startswith("|"), f"a table outside <details>: {line}"
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", rendered):
        assert (ROOT / "docs" / image).is_file(), image
