"""Regexes checked the way Envoy will check them, so a pattern Envoy rejects is never pushed.

Envoy compiles route regexes with Google RE2 and refuses a pattern whose RE2 program is
larger than 100 instructions (runtime key ``re2.max_program_size.error_level``). We compile
with the same library (the ``google-re2`` package): RE2 lacks Python-only constructs such
as lookarounds and backreferences, and its parser names the exact problem.

Measured against Envoy 1.40 (``envoy --mode validate``): the size Envoy reports equals
RE2's program size for the pattern's UTF-8 bytes compiled as Latin-1 (e.g. 100 accepted,
104 and 111 refused, with the same numbers in both), not the larger UTF-8 program size.
"""

from __future__ import annotations

import re2

ENVOY_MAX_PROGRAM_SIZE = 100


def _options(latin1: bool) -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would otherwise print every bad pattern to stderr
    if latin1:
        opts.encoding = re2.Options.Encoding.LATIN1
    return opts


def regex_problem(pattern: str) -> str | None:
    """Why Envoy would reject ``pattern``, with a fix; None when it is fine."""
    if not pattern:
        return "must not be empty"
    try:
        re2.compile(pattern, _options(latin1=False))
    except re2.error as err:
        detail = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        hint = ""
        if "(?=" in pattern or "(?!" in pattern or "(?<" in pattern:
            hint = "; RE2 (Envoy's regex engine) has no lookahead/lookbehind: match the text itself instead"
        elif "\\1" in pattern or "(?P=" in pattern:
            hint = "; RE2 (Envoy's regex engine) has no backreferences"
        return f"is not a valid RE2 regex ({detail}){hint}"
    size = re2.compile(pattern.encode(), _options(latin1=True)).programsize
    if size > ENVOY_MAX_PROGRAM_SIZE:
        return (
            f"is too complex for Envoy (RE2 program size {size} > {ENVOY_MAX_PROGRAM_SIZE});"
            " simplify it, e.g. use a prefix match or fewer repetitions"
        )
    return None


def group_count(pattern: str) -> int:
    """How many capture groups a valid pattern has (for checking ``\\N`` in substitutions)."""
    return int(re2.compile(pattern, _options(latin1=False)).groups)
