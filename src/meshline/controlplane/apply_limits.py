"""How much one apply may carry, from the environment (docs/security.md, "Bad input")."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from meshline.core.errors import MeshlineError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw and (not raw.isdigit() or int(raw) < 1):
        raise MeshlineError(f"{name} '{raw}' must be a whole number above 0 (default {default})")
    return int(raw) if raw else default


@dataclass(frozen=True)
class ApplyLimits:
    """How much one ``POST /api/v1/apply`` may carry (docs/security.md, "Bad input")."""

    documents: int = field(default_factory=lambda: _env_int("MESHLINE_APPLY_MAX_DOCUMENTS", 5000))
    bytes: int = field(default_factory=lambda: _env_int("MESHLINE_APPLY_MAX_BYTES", 8 * 1024 * 1024))
