"""The browser's messages: small JSON objects ``{"type": ..., ...}``, checked field by field.

Anything that is not exactly an expected action (not JSON, not an object, an unknown type
or field, a wrong type, a coordinate off the grid, a number out of range or not finite, a
name the server does not offer, more than :data:`MAX_MESSAGE_BYTES`) raises
:class:`ActionError` with a one-line message for that client, before anything changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024
MAX_SEQ = 2**53  # JavaScript's largest exact integer: the page numbers its actions

Check = Callable[[str, Any], Any]


class ActionError(ValueError):
    """A refused message; ``str(e)`` is the line sent back to the client."""


def _reject_constant(name: str) -> None:
    raise ActionError(f"message holds {name}: numbers must be finite")


def decode(raw: str | bytes | bytearray) -> dict:
    """A text message -> its JSON object, which has a string ``type``."""
    if not isinstance(raw, str):
        raise ActionError("binary messages are not accepted: send JSON text")
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ActionError(f"message of {size} bytes refused: the limit is {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except ActionError:
        raise
    except (ValueError, RecursionError) as e:
        raise ActionError(f"message is not valid JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise ActionError(f"message must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ActionError('message needs a "type" string')
    return obj


# ----------------------------------------------------------------------------- field checks
def boolean() -> Check:
    def check(name, v):
        if not isinstance(v, bool):
            raise ActionError(f"{name} must be true or false, got {_show(v)}")
        return v

    return check


def integer(lo: int, hi: int) -> Check:
    def check(name, v):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ActionError(f"{name} must be an integer in [{lo}, {hi}], got {_show(v)}")
        return v

    return check


def number(lo: float, hi: float) -> Check:
    def check(name, v):
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or not lo <= v <= hi:
            raise ActionError(f"{name} must be a number in [{lo:g}, {hi:g}], got {_show(v)}")
        return float(v)

    return check


def choice(options: Sequence[str]) -> Check:
    options = tuple(options)

    def check(name, v):
        if not isinstance(v, str) or v not in options:
            raise ActionError(f"{name} must be one of {list(options)}, got {_show(v)}")
        return v

    return check


def cells(h: int, w: int, with_value: bool = False) -> Check:
    """A non-empty list of at most h*w grid cells ``[row, col]`` (``[row, col, value]``
    with ``with_value``, value in [0, 1]) -> list of tuples."""
    coord_r, coord_c, value = integer(0, h - 1), integer(0, w - 1), number(0.0, 1.0)
    arity = 3 if with_value else 2
    form = "[row, col, value]" if with_value else "[row, col]"

    def check(name, v):
        if not isinstance(v, list) or not 1 <= len(v) <= h * w:
            raise ActionError(f"{name} must be a list of 1 to {h * w} cells {form}")
        out = []
        for i, cell in enumerate(v):
            if not isinstance(cell, list) or len(cell) != arity:
                raise ActionError(f"{name}[{i}] must be {form}, got {_show(cell)}")
            item = (coord_r(f"{name}[{i}] row", cell[0]), coord_c(f"{name}[{i}] col", cell[1]))
            if with_value:
                item += (value(f"{name}[{i}] value", cell[2]),)
            out.append(item)
        return out

    return check


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


# ----------------------------------------------------------------------------- actions
def check_action(obj: dict, schemas: Mapping[str, Mapping[str, Check]]) -> dict:
    """Check ``obj`` against the schema of its type (field -> check; every field is
    required; ``seq``, the page's action number, is allowed on every type) -> the cleaned
    action (a new dict)."""
    kind = obj["type"]
    if kind not in schemas:
        raise ActionError(f"unknown action type {_show(kind)}; expected one of {sorted(schemas)}")
    schema = schemas[kind]
    extra = sorted(set(obj) - set(schema) - {"type", "seq"})
    if extra:
        raise ActionError(f"action {kind!r} has unknown field(s) {extra}")
    out = {"type": kind}
    if "seq" in obj:
        out["seq"] = integer(0, MAX_SEQ)("seq", obj["seq"])
    for field, check in schema.items():
        if field not in obj:
            raise ActionError(f"action {kind!r} needs field {field!r}")
        out[field] = check(field, obj[field])
    return out


def parse(raw: str | bytes, schemas: Mapping[str, Mapping[str, Check]]) -> dict:
    """:func:`decode` then :func:`check_action`."""
    return check_action(decode(raw), schemas)
