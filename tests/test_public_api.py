"""The package's public surface: ``__all__``, ``py.typed`` and the error hierarchy."""

from __future__ import annotations
import __future__

import builtins
import copy
import importlib
import importlib.resources
import inspect
import pickle
import re
import subprocess
import sys
import types

import pytest

import tokenbucket
import tokenbucket._errors
from tokenbucket import (
    AcquireTimeoutError,
    AmountExceedsLimitError,
    ArgumentTypeError,
    InvalidArgumentError,
    TokenBucketError,
)

PRIVATE_MODULES = [
    "_bucket",
    "_errors",
    "_group",
    "_lease",
    "_limiter",
    "_queue",
    "_rate",
    "_statistics",
    "_transport",
    "_window",
]


def public_names() -> set[str]:
    """Names bound in the package that a user could mean to import."""
    names = set()
    for name, value in vars(tokenbucket).items():
        if name.startswith("_"):
            continue
        if isinstance(value, types.ModuleType | __future__._Feature):
            continue  # submodules and ``from __future__ import annotations``
        names.add(name)
    return names


def test_all_is_sorted() -> None:
    assert tokenbucket.__all__ == sorted(tokenbucket.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(set(tokenbucket.__all__)) == len(tokenbucket.__all__)


def test_every_name_in_all_exists() -> None:
    for name in tokenbucket.__all__:
        assert hasattr(tokenbucket, name), name


def test_all_lists_every_public_name_and_nothing_private() -> None:
    listed = set(tokenbucket.__all__)
    assert public_names() <= listed
    private = {n for n in listed if n.startswith("_") and not re.fullmatch(r"__\w+__", n)}
    assert private == set()
    assert listed - public_names() <= {"__version__"}


@pytest.mark.parametrize("module", PRIVATE_MODULES)
def test_all_reexports_what_the_modules_export(module: str) -> None:
    exported = importlib.import_module(f"tokenbucket.{module}").__all__
    assert set(exported) <= set(tokenbucket.__all__)
    for name in exported:
        assert getattr(tokenbucket, name) is getattr(
            importlib.import_module(f"tokenbucket.{module}"), name
        )


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from tokenbucket import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(tokenbucket.__all__)


def test_fixed_names_are_public() -> None:
    """The names the product contract fixes (the ones built so far)."""
    for name in [
        "TokenBucket",
        "SlidingWindow",
        "TokenBucketError",
        "AcquireTimeoutError",
        "AsyncLimitedTransport",
    ]:
        assert name in tokenbucket.__all__


def test_importing_the_package_imports_no_http_library() -> None:
    code = "import sys, tokenbucket; print(sorted({'httpx', 'httpx2'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_version() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", tokenbucket.__version__)


def test_py_typed_ships_in_the_package() -> None:
    marker = importlib.resources.files("tokenbucket") / "py.typed"
    assert marker.is_file()


# -- errors ----------------------------------------------------------------------------------

# (class, its parent in the library's hierarchy, the built-in it also is)
HIERARCHY = [
    (TokenBucketError, Exception, None),
    (InvalidArgumentError, TokenBucketError, ValueError),
    (AmountExceedsLimitError, InvalidArgumentError, ValueError),
    (ArgumentTypeError, TokenBucketError, TypeError),
    (AcquireTimeoutError, TokenBucketError, TimeoutError),
    (tokenbucket.LeaseError, TokenBucketError, RuntimeError),
    (tokenbucket.BackendError, TokenBucketError, None),
    (tokenbucket.BackendConfigurationError, tokenbucket.BackendError, None),
    (tokenbucket.BackendUnavailableError, tokenbucket.BackendError, ConnectionError),
]


@pytest.mark.parametrize(("cls", "parent", "builtin"), HIERARCHY)
def test_error_hierarchy(
    cls: type[Exception], parent: type[Exception], builtin: type[Exception] | None
) -> None:
    assert issubclass(cls, parent)
    assert issubclass(cls, TokenBucketError)
    if builtin is not None:
        assert issubclass(cls, builtin)
    others = {ValueError, TypeError, TimeoutError, RuntimeError, ConnectionError} - {builtin}
    for other in others:
        assert not issubclass(cls, other), (cls, other)
    assert cls.__name__ in tokenbucket.__all__


def test_timeout_error_is_a_builtin_timeout_error() -> None:
    assert issubclass(AcquireTimeoutError, TimeoutError)
    with pytest.raises(TimeoutError):
        raise AcquireTimeoutError("too slow")


def drawn_hierarchy() -> dict[str, tuple[str, str | None]]:
    """Parse the tree drawn in ``_errors``' docstring: name -> (parent, "also" builtin)."""
    doc = inspect.getdoc(tokenbucket._errors)
    assert doc is not None
    tree: dict[str, tuple[str, str | None]] = {}
    stack: list[tuple[int, str]] = []
    line = re.compile(r"^(?P<indent>[\s│├└─]*?)(?P<name>[A-Z]\w+)\s*(?:\(also (?P<also>\w+)\))?$")
    for text in doc.splitlines():
        if not text.strip() or text.strip().endswith("::"):
            continue
        match = line.match(text.strip("\n"))
        if match is None:
            continue
        depth = len(match["indent"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else "Exception"
        tree[match["name"]] = (parent, match["also"])
        stack.append((depth, match["name"]))
    return tree


def test_error_hierarchy_matches_the_drawing() -> None:
    tree = drawn_hierarchy()
    assert set(tree) == set(tokenbucket._errors.__all__)
    for name, (parent, also) in tree.items():
        cls = getattr(tokenbucket, name)
        assert issubclass(cls, getattr(tokenbucket, parent, Exception)), name
        if also is not None:
            assert issubclass(cls, getattr(builtins, also)), name
    assert tree["AmountExceedsLimitError"][0] == "InvalidArgumentError"
    assert tree["InvalidArgumentError"] == ("TokenBucketError", "ValueError")


def test_errors_carry_the_argument_name() -> None:
    assert InvalidArgumentError("capacity", "capacity must be > 0").argument == "capacity"
    assert ArgumentTypeError("rate", "rate must be a number").argument == "rate"
    error = AmountExceedsLimitError(6.0, 5.0, "bucket's capacity")
    assert error.argument == "amount"
    assert (error.amount, error.maximum) == (6.0, 5.0)
    assert "amount" in str(error)
    assert "5.0" in str(error)


ERRORS = [
    InvalidArgumentError("capacity", "capacity must be > 0, got -1"),
    ArgumentTypeError("rate", "rate must be a real number, not str"),
    AmountExceedsLimitError(6.0, 5.0, "bucket's capacity"),
    AcquireTimeoutError("timed out"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickle_and_copy(error: TokenBucketError) -> None:
    """Errors cross process boundaries (multiprocessing, concurrent.futures) intact."""
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert getattr(clone, "argument", None) == getattr(error, "argument", None)
        assert getattr(clone, "amount", None) == getattr(error, "amount", None)
        assert getattr(clone, "maximum", None) == getattr(error, "maximum", None)
