"""Every Python example in README.md and docs/ runs, so none can go stale.

How the examples are run
------------------------
Each Markdown file is one test. Its fenced blocks run in order, in one namespace, like
a reader pasting them into one interpreter session (a later block may use what an
earlier one defined), in a fresh temporary working directory:

- ```` ```python ```` blocks are executed. A block may ``await`` at top level, as in
  ``python -m asyncio``: all such blocks of a file share one event loop. A block that
  starts its own loop (``asyncio.run``, ``anyio.run``, ``trio.run``) gets one.
- Time is **virtual**: ``asyncio.run`` and top-level ``await`` run on a ``looptime``
  loop, and ``trio.run``/``anyio.run`` get trio's ``MockClock(autojump_threshold=0)``
  or ``looptime``, unless the block chose a loop or clock itself. A minute of limiting
  takes milliseconds. Files that use Redis run in real time instead (below).
- A block whose title names a file (```` ```toml title="limits.toml" ````) is written to
  the working directory under that name, for later blocks to read. A Python block
  titled ``test_*.py`` is a test module: it is written out and run with pytest in a
  subprocess (next to any ``conftest.py`` block before it), and must pass.
- Every function a block defines at top level must be called by the time the file
  ends, so an example cannot define ``main()`` and silently never run it.
- A block that must not run carries ``<!-- not-run: reason -->`` on the line before it.
  ``test_not_run_markers_are_rare_and_explained`` keeps such blocks rare and explained.
- A file whose examples import a package that is not installed (the peers of the
  "Coming from" pages come with the ``docs`` extra) is skipped, naming it, or fails when
  ``CI`` is set.

Fakes
-----
Examples call the real SDKs' APIs, against local fakes (``tests/docs/_fakes.py``):
``openai.AsyncOpenAI()`` builds a real ``openai`` client whose HTTP goes to an
in-process fake server; ``anthropic`` and ``google.genai`` are fake modules with the
same shapes. A block may also use the name ``client`` without defining it: it is an
``openai.AsyncOpenAI()`` (the convention the README and the guides state).

Redis
-----
A block that mentions ``RedisBackend`` needs Redis: the whole file then runs in real
time, every ``redis://127.0.0.1:6379/0`` in its blocks is redirected to database 12
(``TOKENBUCKET_DOCS_REDIS_URL``), and keys under the ``tokenbucket`` prefix there are
deleted before and after. If Redis cannot be reached, the file is skipped from that
block on, with the command that starts one, or fails when the environment variable
``CI`` is set.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import trio
from trio.testing import MockClock

from tests.docs import _fakes
from tests.docs._markdown import PYTHON_ALIASES, ROOT, Block, blocks, documents, run_python

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator
    from types import CodeType, FrameType

DOCS_REDIS_URL_IN_TEXT = "redis://127.0.0.1:6379/0"
DOCS_REDIS_URL = os.environ.get("TOKENBUCKET_DOCS_REDIS_URL", "redis://127.0.0.1:6379/12")
REDIS_START_HINT = "redis-server --daemonize yes --port 6379 --save '' --appendonly no"
_REDIS_URL_LITERAL = re.compile(r"""["'](rediss?://[^"']*)["']""")

# At most this many Python blocks in all the documents may be marked not-run.
MAX_NOT_RUN = 3


def _python_blocks() -> list[Block]:
    return [b for path in documents() for b in blocks(path) if b.lang == "python"]


def _runnable_documents() -> list[Path]:
    return [p for p in documents() if any(b.lang == "python" for b in blocks(p))]


# -- the rules for markers and fences ---------------------------------------------------


def test_not_run_markers_are_rare_and_explained() -> None:
    all_blocks = [b for path in documents() for b in blocks(path)]
    python = [b for b in all_blocks if b.lang == "python"]
    assert len(python) >= 40, f"expected the docs to hold many examples, found {len(python)}"
    problems = [
        f"{b.where}: a not-run marker needs a reason: <!-- not-run: why -->"
        for b in all_blocks
        if b.marker is not None and not b.not_run
    ]
    problems += [
        f"{b.where}: a not-run marker on a ```{b.lang} block (only Python blocks run)"
        for b in all_blocks
        if b.marker is not None and b.lang != "python"
    ]
    problems += [f"{b.where}: this code block is never closed" for b in all_blocks if not b.closed]
    problems += [
        f"{b.where}: ```{b.lang} is not run by the example test; write ```python"
        for b in all_blocks
        if b.lang in PYTHON_ALIASES
    ]
    assert not problems, "\n".join(problems)
    skipped = [b for b in python if b.not_run]
    assert len(skipped) <= MAX_NOT_RUN, (
        f"{len(skipped)} Python examples are marked not-run (at most {MAX_NOT_RUN}): "
        + ", ".join(b.where for b in skipped)
    )


def test_redis_examples_use_the_redirectable_url() -> None:
    wrong = [
        f"{b.where}: {url!r}"
        for b in _python_blocks()
        for url in _REDIS_URL_LITERAL.findall(b.code)
        if url != DOCS_REDIS_URL_IN_TEXT
    ]
    assert not wrong, (
        f"Redis examples must use {DOCS_REDIS_URL_IN_TEXT!r}, which the test redirects to "
        f"its own database: " + ", ".join(wrong)
    )


# -- running the examples ----------------------------------------------------------------


def _virtual_loop() -> asyncio.AbstractEventLoop:
    import looptime

    loop: asyncio.AbstractEventLoop = looptime.new_event_loop()
    return loop


class _Loop:
    """One event loop that several blocks' top-level awaits run on, in turn."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self._factory = factory
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._loop is None:
            self._loop = self._factory()
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _use_virtual_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ways an example starts an event loop use a virtual clock by default."""
    real_anyio_run = anyio.run
    real_trio_run = trio.run

    def asyncio_run(
        main: Coroutine[Any, Any, Any],
        *,
        debug: bool | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop running here: as asyncio.run requires
        else:
            main.close()
            raise RuntimeError("asyncio.run() cannot be called from a running event loop")
        loop = _Loop(loop_factory or _virtual_loop)
        try:
            return loop.run(main)
        finally:
            loop.close()

    def anyio_run(
        func: Callable[..., Coroutine[Any, Any, Any]],
        *args: object,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
    ) -> Any:
        options = dict(backend_options or {})
        if backend == "asyncio":
            options.setdefault("loop_factory", _virtual_loop)
        elif backend == "trio":
            options.setdefault("clock", MockClock(autojump_threshold=0))
        return real_anyio_run(func, *args, backend=backend, backend_options=options)

    def trio_run(async_fn: Callable[..., Any], *args: object, **options: Any) -> Any:
        options.setdefault("clock", MockClock(autojump_threshold=0))
        return real_trio_run(async_fn, *args, **options)

    monkeypatch.setattr(asyncio, "run", asyncio_run)
    monkeypatch.setattr(anyio, "run", anyio_run)
    monkeypatch.setattr(trio, "run", trio_run)


@contextlib.contextmanager
def _calls_recorded(filenames: set[str]) -> Iterator[set[tuple[str, int]]]:
    """Record (filename, first line) of every function called from the given files."""
    called: set[tuple[str, int]] = set()
    previous = sys.getprofile()

    def profile(frame: FrameType, event: Any, arg: object) -> None:
        if event == "call":
            code: CodeType = frame.f_code
            if code.co_filename in filenames:
                called.add((code.co_filename, code.co_firstlineno))
        if previous is not None:
            previous(frame, event, arg)

    sys.setprofile(profile)
    try:
        yield called
    finally:
        sys.setprofile(previous)


def _top_level_functions(tree: ast.Module) -> list[tuple[str, int]]:
    """(name, first line) of each function a block defines at top level."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            found.append((node.name, first))
    return found


def _redis_unreachable() -> str | None:
    try:
        import redis
    except ImportError:
        return "redis-py is not installed: pip install -e '.[redis]'"
    client = redis.Redis.from_url(DOCS_REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
        for key in client.scan_iter(match="*tokenbucket*", count=1000):
            client.delete(key)
    except (redis.RedisError, OSError) as exc:
        return (
            f"Redis at {DOCS_REDIS_URL} is unreachable ({exc}). Start one with:\n"
            f"    {REDIS_START_HINT}\n"
            "or point TOKENBUCKET_DOCS_REDIS_URL at one."
        )
    finally:
        client.close()
    return None


def _run_test_module(block: Block, workdir: Path) -> None:
    assert block.title is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    returncode, output = run_python(
        *("-m", "pytest", "-q", "-p", "no:cacheprovider", block.title), cwd=workdir, env=env
    )
    message = f"{block.where}: the test module {block.title} did not pass:\n{output}"
    assert returncode == 0, message
    assert " passed" in output, message


# Imported by examples but provided by the fakes, whether or not they are installed.
_FAKED_MODULES = frozenset({"anthropic", "google"})


def _missing_imports(page: list[Block]) -> list[str]:
    """Top-level modules the page's Python examples import that are not installed."""
    names: set[str] = set()
    for block in page:
        if block.lang != "python" or block.not_run:
            continue
        for node in ast.walk(ast.parse(block.code)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return sorted(
        name
        for name in names - _FAKED_MODULES
        if name not in sys.modules and importlib.util.find_spec(name) is None
    )


def _run_document(document: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every example of one Markdown file, as the module docstring describes."""
    page = blocks(document)
    missing = _missing_imports(page)
    if missing:
        reason = (
            f"{document.name} imports {', '.join(missing)}, not installed: "
            "pip install -e '.[dev]' (or '.[test,docs]')"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {reason}", pytrace=False)
        pytest.skip(reason)
    needs_redis = any(b.lang == "python" and "RedisBackend" in b.code for b in page)
    providers = _fakes.install(monkeypatch)
    monkeypatch.chdir(workdir)
    if not needs_redis:
        _use_virtual_time(monkeypatch)
    namespace: dict[str, Any] = {"__name__": "__main__", "client": providers.openai_client()}
    loop = _Loop(asyncio.new_event_loop if needs_redis else _virtual_loop)
    filename = str(document)
    defined: list[tuple[Block, str, int]] = []
    redis_checked = False
    # A failing example raises out of here: its traceback shows the Markdown file's lines,
    # and pytest shows what the examples printed.
    try:
        with _calls_recorded({filename}) as called:
            for block in page:
                if block.title is not None and block.lang != "python":
                    (workdir / block.title).write_text(block.code, encoding="utf-8")
                    continue
                if block.lang != "python" or block.not_run:
                    continue
                if block.title is not None and block.title.endswith(".py"):
                    (workdir / block.title).write_text(block.code, encoding="utf-8")
                    if Path(block.title).name.startswith("test_"):
                        _run_test_module(block, workdir)
                    continue
                if "RedisBackend" in block.code and not redis_checked:
                    redis_checked = True
                    unreachable = _redis_unreachable()
                    if unreachable is not None:
                        if os.environ.get("CI"):
                            pytest.fail(f"CI is set and {block.where} needs Redis. {unreachable}")
                        pytest.skip(f"{block.where} and the rest of the file: {unreachable}")
                code = block.code.replace(DOCS_REDIS_URL_IN_TEXT, DOCS_REDIS_URL)
                source = "\n" * (block.line - 1) + code  # line numbers as in the file
                tree = ast.parse(source, filename)
                defined += [(block, name, line) for name, line in _top_level_functions(tree)]
                compiled = compile(
                    tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
                )
                result = eval(compiled, namespace)  # the docs' own examples
                if asyncio.iscoroutine(result):
                    loop.run(result)
    finally:
        loop.close()
        if redis_checked:
            _redis_unreachable()  # deletes the keys the examples left
    never_called = [
        f"{block.where}: {name}() is defined but never called"
        for block, name, line in defined
        if (filename, line) not in called
    ]
    assert not never_called, "\n".join(never_called)


@pytest.mark.parametrize("document", _runnable_documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples(document: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run_document(document, tmp_path, monkeypatch)


# -- the harness itself ------------------------------------------------------------------


def _page(tmp_path: Path, text: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    workdir = tmp_path / "work"
    workdir.mkdir()
    return path


def test_harness_runs_blocks_in_order_in_virtual_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = _page(
        tmp_path,
        '```toml title="limits.toml"\n[limits.a]\nrequests_per_minute = 1\n```\n\n'
        "```python\nimport asyncio, time\nimport tokenbucket as tb\n"
        "limits = tb.BucketGroup.from_toml('limits.toml')\nstarted = time.monotonic()\n```\n\n"
        "```python\nasync def twice():\n    for _ in range(2):\n"
        "        async with limits.acquire('a'):\n            pass\n"
        "    return asyncio.get_running_loop().time()\n\n"
        "assert asyncio.run(twice()) == 60.0\n```\n\n"
        "```python\nassert await twice() == 120.0   # the page's loop; the limiter follows\n"
        "assert time.monotonic() - started < 30\n```\n",
    )
    _run_document(page, tmp_path / "work", monkeypatch)


def test_harness_catches_a_function_never_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = _page(tmp_path, "```python\nasync def main():\n    raise RuntimeError\n```\n")
    with pytest.raises(AssertionError, match=r"main\(\) is defined but never called"):
        _run_document(page, tmp_path / "work", monkeypatch)


def test_harness_reports_the_failing_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = _page(tmp_path, "Text.\n\n```python\nx = 1\nassert x == 2\n```\n")
    with pytest.raises(AssertionError) as failure:
        _run_document(page, tmp_path / "work", monkeypatch)
    assert failure.traceback[-1].path == page
    assert failure.traceback[-1].lineno + 1 == 5  # pytest counts lines from 0


def test_harness_skips_only_marked_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "<!-- not-run: needs a GPU -->\n```python\nraise SystemExit\n```\n"
    (block,) = blocks(_page(tmp_path, text))
    assert block.not_run == "needs a GPU"
    _run_document(tmp_path / "page.md", tmp_path / "work", monkeypatch)
    (bare,) = blocks(_page(tmp_path / "bare", "<!-- not-run -->\n```python\npass\n```\n"))
    assert bare.marker is not None
    assert bare.not_run is None
