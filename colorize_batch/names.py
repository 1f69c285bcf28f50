"""File names as they are on disk: any bytes, not only valid UTF-8.

Linux file names are bytes; Python turns the bytes that are not UTF-8 (old Samba/FAT shares,
Latin-1 names such as ``b'a\\xe9t\\xe9.jpg'``) into lone surrogates (PEP 383,
``surrogateescape``), which open and stat the file fine but cannot be encoded as UTF-8.

- :func:`display` is the name for people (logs, the summary, the gallery, XMP): undecodable
  bytes shown as ``\\xe9``, control characters (a newline in a name) as ``\\x0a``: one line.
- :func:`to_json` is the name for machines (the manifest, reports): JSON text that is valid
  UTF-8 and gives back the exact same ``str`` (so the same bytes) when read with
  ``json.loads``. Documented escape: a name that is not valid UTF-8 is written with JSON's
  ``\\udcXX`` escapes (``ensure_ascii``), ``os.fsencode`` of the loaded string is the name's
  bytes. Every other name is written as plain UTF-8.
"""

from __future__ import annotations

import json
import os
from typing import Any


# control characters (C0, DEL, C1) and Unicode's line/paragraph separators: a name holding a
# newline must not split a log line or forge the next one
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def display(path: str | os.PathLike) -> str:
    """``path`` for people: valid UTF-8 as it is, other bytes and control characters (a newline,
    a tab, an escape) as ``\\xNN``, so a name is always one line."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").translate(_CONTROLS)


def to_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never fails on a name that is not UTF-8 and round-trips it exactly."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it (JSON \\udcXX), the rest as well
        text = json.dumps(obj, ensure_ascii=True, **kwargs)
    return text
