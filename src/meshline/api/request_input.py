"""What the API takes from a request before any handler logic: the body as JSON within bounds,
and headers that must be numbers. Every refusal is a 4xx naming the field and the fix; none
may surface as a 500 (``RecursionError`` from deep nesting, ``ValueError`` from a 4,301-digit
integer, ``NaN`` that no JSON client can read back)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from meshline.controlplane.apply_limits import ApplyLimits  # noqa: F401 - where the API finds it
from meshline.core.errors import FieldProblem, TooLarge, ValidationError

MAX_DEPTH = 64  # objects/arrays inside each other; a resource needs about 10
MAX_INT_DIGITS = 18  # fits int64, which is what every numeric field (and PostgreSQL) takes


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def _int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits is too large; at most {MAX_INT_DIGITS} digits")
    return int(text)


def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON, or a ValidationError saying what is wrong with it."""
    try:
        text = raw.decode()
        data = json.loads(text, parse_constant=_reject_constant, parse_int=_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValidationError([FieldProblem("", f"request body is not valid JSON: {err}")]) from None
    except RecursionError:
        raise ValidationError(
            [FieldProblem("", f"request body is nested too deeply; at most {MAX_DEPTH} levels")]
        ) from None
    except ValueError as err:
        raise ValidationError([FieldProblem("", f"request body: {err}")]) from None
    check_depth(data)
    return data


def check_depth(data: Any) -> None:
    """Refuse nesting beyond MAX_DEPTH (iteratively: the check itself must not recurse)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValidationError(
                [FieldProblem(path, f"is nested {MAX_DEPTH} levels deep already; at most {MAX_DEPTH} levels")]
            )
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))


async def json_body(request: web.Request, limit: int | None = None, what: str = "request body") -> Any:
    """The request's JSON body; over ``limit`` bytes is a 413 naming the limit."""
    if limit is None:
        return parse_json(await request.read())
    size = request.content_length
    if size is not None and size > limit:
        raise TooLarge(_too_large(what, size, limit))
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise TooLarge(_too_large(what, None, limit))
    return parse_json(bytes(data))


def _too_large(what: str, size: int | None, limit: int) -> str:
    has = f"is {size} bytes" if size is not None else "is larger than that"
    return (
        f"this {what} {has}; one apply takes at most {limit} bytes (MESHLINE_APPLY_MAX_BYTES):"
        " split it into several applies"
    )


def if_match(request: web.Request) -> int | None:
    """The ``If-Match`` header as a resource version (an ETag-style quoted one too)."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > MAX_INT_DIGITS:
        raise ValidationError(
            [FieldProblem("If-Match", f"'{raw[:40]}' is not a resource version; send the version you read, e.g. 12")]
        )
    return int(text)
