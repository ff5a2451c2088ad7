"""RFC 9651 Structured Field Values: just enough to read a List of Items.

The IETF ``RateLimit`` and ``RateLimit-Policy`` fields (and the ``RateLimit-Limit`` of
the older drafts) are Lists of Items with Parameters, such as
``"perhr";r=900;t=1800, "permin";r=10;t=20``. :func:`parse_list` reads one, or returns
``None`` when the text is not one; it never raises on any string.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

__all__ = ["BareItem", "Item", "parse_list"]

BareItem = int | float | str | bytes | bool
Item = tuple[BareItem, dict[str, BareItem]]  # a value and its parameters

_NUMBER: Final = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?")
_STRING: Final = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_TOKEN: Final = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_BYTES: Final = re.compile(r":([A-Za-z0-9+/=]*):")
_BOOLEAN: Final = re.compile(r"\?([01])")
_KEY: Final = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_STRING_ESCAPE: Final = re.compile(r"\\(.)")


def parse_list(text: str) -> list[Item] | None:
    """Parse a Structured Field List of Items (RFC 9651 section 4.2.1), or None.

    Supports Integers, Decimals, Strings, Tokens, Byte Sequences and Booleans, which is
    all the RateLimit fields use; Inner Lists, Dates and Display Strings fail. Strings
    and Tokens both come back as ``str``.

    >>> parse_list('"permin";r=10;t=20, 100;w=60')
    [('permin', {'r': 10, 't': 20}), (100, {'w': 60})]
    >>> parse_list('"permin";r=10,') is None  # a trailing comma
    True
    """
    items: list[Item] = []
    position = 0
    end = len(text)
    while position < end:
        parsed = _parse_item(text, position)
        if parsed is None:
            return None
        item, position = parsed
        items.append(item)
        position = _skip(text, position, " \t")
        if position == end:
            return items
        if text[position] != ",":
            return None
        position = _skip(text, position + 1, " \t")
        if position == end:
            return None  # a trailing comma
    return items


def _skip(text: str, position: int, spaces: str) -> int:
    """The first position at or after ``position`` that is not one of ``spaces``."""
    while position < len(text) and text[position] in spaces:
        position += 1
    return position


def _parse_item(text: str, position: int) -> tuple[Item, int] | None:
    """Parse an Item and its Parameters at ``position``; return it and the next position."""
    parsed = _parse_bare_item(text, position)
    if parsed is None:
        return None
    value, position = parsed
    params: dict[str, BareItem] = {}
    while position < len(text) and text[position] == ";":
        position = _skip(text, position + 1, " ")
        key = _KEY.match(text, position)
        if key is None:
            return None
        position = key.end()
        param: BareItem = True
        if position < len(text) and text[position] == "=":
            parsed = _parse_bare_item(text, position + 1)
            if parsed is None:
                return None
            param, position = parsed
        params[key.group()] = param
    return (value, params), position


def _parse_bare_item(text: str, position: int) -> tuple[BareItem, int] | None:
    """Parse a Bare Item at ``position``; return it and the next position."""
    if match := _NUMBER.match(text, position):
        number = match.group()
        if "." in number:
            if len(number.lstrip("-").split(".")[0]) > 12:
                return None
            return float(number), match.end()
        return int(number), match.end()
    if match := _STRING.match(text, position):
        return _STRING_ESCAPE.sub(r"\1", match.group(1)), match.end()
    if match := _TOKEN.match(text, position):
        return match.group(), match.end()
    if match := _BYTES.match(text, position):
        try:
            return base64.b64decode(match.group(1), validate=True), match.end()
        except binascii.Error:
            return None
    if match := _BOOLEAN.match(text, position):
        return match.group(1) == "1", match.end()
    return None
