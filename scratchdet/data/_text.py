"""Reading a data set's small text files (class lists, split lists, YOLO labels, data.yaml, json).

UTF-8 with or without a BOM, any line ending (``\\n``, ``\\r\\n``, ``\\r``). Bytes that are not
UTF-8 raise one :class:`DataError` naming the file and the line, not a UnicodeDecodeError.
"""
from __future__ import annotations

import codecs
import reprlib

from ..structures.errors import DataError

__all__ = ["read_text", "read_lines", "short_repr"]

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 6


def short_repr(value: object) -> str:
    """``repr(value)`` cut to a length that fits in a one-line error message."""
    return _REPR.repr(value)


def _split(text):
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_text(path: str) -> str:
    """The text of the UTF-8 file ``path``, without a leading BOM."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(_split(data[:exc.start].decode("utf-8")))
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); "
                        "save the file as UTF-8") from None


def read_lines(path: str) -> list[str]:
    """The lines of the UTF-8 file ``path`` without their line ends; line ``n`` is item ``n - 1``."""
    return _split(read_text(path))
