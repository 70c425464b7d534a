"""Checks for values that end up in file paths or commands."""

from __future__ import annotations

import re

from hookpack.errors import BadInput

# Ganeti instance names are host names: dot-separated labels of letters, digits,
# '-' and '_'. Anything else (slashes, '..', control characters, spaces) never
# reaches a path.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MAX_NAME = 253
MAX_INDEX = 63
_TAP = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def instance_name(name: str) -> str:
    """Return ``name`` if it is a safe instance name, else raise BadInput."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise BadInput(f"instance name {_short(name)} is not a valid host name; refusing to use it")
    return name


def device_index(value: object, what: str = "index") -> int:
    """A NIC or disk index: an int 0..63 (also from a string of digits)."""
    if isinstance(value, bool):
        raise BadInput(f"{what} {value!r} is not a number")
    if isinstance(value, str):
        # str.isdigit() is True for "²" or an Arabic-Indic digit: only ASCII digits are an index.
        if not (value.isascii() and value.isdigit()) or len(value) > 3:
            raise BadInput(f"{what} {_short(value)} is not a number from 0 to {MAX_INDEX}")
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_INDEX:
        raise BadInput(f"{what} {value!r} is not a number from 0 to {MAX_INDEX}")
    return value


def interface_name(name: str) -> str:
    """A network interface name as the kernel allows it (max 15 chars, no '/')."""
    if not isinstance(name, str) or not _TAP.fullmatch(name) or name in (".", ".."):
        raise BadInput(f"interface name {_short(name)} is not valid")
    return name


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
