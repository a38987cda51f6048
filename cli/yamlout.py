"""A small YAML emitter for JSON-shaped data (dicts, lists, strings, numbers, bools, None).

The API's answers are JSON, so this is all ``-o yaml`` needs, without a YAML library in
the dependencies. Strings are plain only when no YAML reader could take them for anything
else (a number, a bool, null, a key, a comment); otherwise they are double-quoted.
"""

from __future__ import annotations

import math
import re

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./@+-]*( [A-Za-z0-9_./@+-]+)*$")
# YAML 1.1 readers (PyYAML) take these for bools or null whatever their case.
_RESERVED = {"null", "true", "false", "yes", "no", "on", "off", "y", "n"}


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F or (
            code >= 0xA0 and ch.isprintable() and ch not in "\u2028\u2029"
        ):
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, dict):
        return "{}"  # only empty ones get here
    if isinstance(value, list | tuple):
        return "[]"
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return _quote(text)


def _nested(value: object) -> bool:
    return isinstance(value, dict | list | tuple) and len(value) > 0


def _lines(value: object) -> list[str]:
    if isinstance(value, dict) and value:
        out = []
        for key, item in value.items():
            if _nested(item):
                out.append(f"{scalar(str(key))}:")
                out.extend("  " + line for line in _lines(item))
            else:
                out.append(f"{scalar(str(key))}: {scalar(item)}")
        return out
    if isinstance(value, list | tuple) and value:
        out = []
        for item in value:
            if _nested(item):
                inner = _lines(item)
                out.append("- " + inner[0])
                out.extend("  " + line for line in inner[1:])
            else:
                out.append(f"- {scalar(item)}")
        return out
    return [scalar(value)]


def dump(value: object) -> str:
    return "\n".join(_lines(value)) + "\n"
