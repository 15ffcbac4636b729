"""Base model for resource specs, shared field types and pydantic-error translation.

Specs are pydantic models with camelCase aliases (what users write in YAML) and
``extra="forbid"`` so a typo is an error, not a silently ignored field.
"""

from __future__ import annotations

import difflib
import re
from datetime import timedelta
from typing import Annotated, Any, TypeVar, get_args, get_origin

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel

from meshline.core.errors import FieldProblem, ValidationError


class Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=True,
    )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


T = TypeVar("T", bound="Spec")

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
NAME_HINT = "must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"


def check_name(value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(NAME_HINT)
    return value


Name = Annotated[str, BeforeValidator(check_name)]

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> timedelta:
    """Parse Go-style durations ("250ms", "2s", "1m30s"); plain numbers are seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '250ms', '2s' or '1m'")
    if isinstance(value, int | float):
        if value != value:  # NaN
            raise ValueError("must be a duration such as '250ms', '2s' or '1m'")
        if value < 0:
            raise ValueError("must not be negative")
        return _bounded(float(value), str(value))
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return _bounded(total, text)
    raise ValueError(f"'{str(value)[:40]}' is not a duration; write e.g. '250ms', '2s', '1m30s'")


MAX_DURATION_S = 100 * 365 * 86400.0  # a century: past any timeout, and inside every Envoy field


def _bounded(seconds: float, text: str) -> timedelta:
    if not seconds <= MAX_DURATION_S:  # also inf
        raise ValueError(f"'{text[:40]}' is too long; at most {int(MAX_DURATION_S // 3600)}h")
    return timedelta(seconds=seconds)


# What the OpenAPI document says a duration is: what parse_duration takes, not ISO 8601.
DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]+)?(us|ms|s|m|h))+\s*$", "examples": ["250ms", "2s", "1m30s", "24h"]},
        {"type": "number", "minimum": 0, "maximum": MAX_DURATION_S, "description": "seconds"},
    ],
    "description": "a duration: a number with a unit (us, ms, s, m, h), several added up ('1m30s'), or seconds",
}


def format_duration(value: timedelta) -> str:
    ms = round(value.total_seconds() * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema(DURATION_SCHEMA),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


def _path(loc: tuple[int | str, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"function-after", "function-before", "function-plain"} or "[" in str(part):
            continue  # pydantic validator frames, not fields
        else:
            out += f".{part}" if out else str(part)
    return out


_FRIENDLY = {
    "missing": "is required",
    "extra_forbidden": "is not a known field; check the spelling against the schema",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's type may hold (through Optional, list, dict, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = get_args(annotation)
    if get_origin(annotation) is dict and len(args) == 2:
        return _models_in(args[1])
    return [m for a in args for m in _models_in(a)]


def _field_names(model: type[BaseModel]) -> dict[str, Any]:
    """What users may write in ``model``: aliases (camelCase) -> the field's type."""
    return {(f.alias or name): f.annotation for name, f in model.model_fields.items()}


def known_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The fields that may be written at ``loc`` (the location of an unknown field)."""
    models = [model]
    for part in loc[:-1]:
        nxt: list[type[BaseModel]] = []
        for m in models:
            if isinstance(part, int) or part not in _field_names(m):
                nxt.append(m)  # a list index / dict key / validator frame: same model
            else:
                nxt.extend(_models_in(_field_names(m)[part]))
        models = nxt
    return sorted({name for m in models for name in _field_names(m)})


def did_you_mean(word: str, choices: list[str]) -> str | None:
    """The closest of ``choices`` to ``word`` (case-insensitive), if any is close."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _unknown_field(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> str:
    if model is None or not loc:
        return _FRIENDLY["extra_forbidden"]
    fields = known_fields(model, loc)
    guess = did_you_mean(str(loc[-1]), fields)
    if guess is not None:
        return f"is not a known field; did you mean '{guess}'?"
    return "is not a known field; known here: " + ", ".join(fields) if fields else _FRIENDLY["extra_forbidden"]


def problems_from(
    err: pydantic.ValidationError, prefix: str = "spec", model: type[BaseModel] | None = None
) -> list[FieldProblem]:
    problems = []
    for e in err.errors():
        kind = e["type"]
        if kind == "extra_forbidden":
            problems.append(FieldProblem(_path(tuple(e["loc"]), prefix), _unknown_field(model, tuple(e["loc"]))))
            continue
        msg = _FRIENDLY.get(kind)
        if msg is None:
            msg = str(e["msg"])
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            elif msg.startswith("Assertion failed, "):
                msg = msg[len("Assertion failed, ") :]
            else:
                msg = msg[:1].lower() + msg[1:]
        problems.append(FieldProblem(_path(tuple(e["loc"]), prefix), msg))
    return problems


def parse_spec(model: type[T], data: object, *, context: str = "", prefix: str = "spec") -> T:
    try:
        return model.model_validate(data if data is not None else {})
    except pydantic.ValidationError as err:
        raise ValidationError(problems_from(err, prefix, model), context=context) from None
