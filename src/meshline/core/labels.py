"""Labels: string key/value pairs every resource carries, beside its spec.

Keys are ``[prefix/]name`` as in Kubernetes (a name of at most 63 letters, digits, ``-``,
``_`` or ``.``, starting and ending with a letter or digit; an optional DNS-subdomain prefix),
values at most 63 such characters or empty. Keys under ``meshline.io/`` belong to the control
plane: it stamps :data:`ORIGIN` and :data:`ZONE` on every resource it stores, so that a
resource can travel (a zone syncing to a global control plane, a Kubernetes backend) and
still say where it was authored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from meshline.core.errors import FieldProblem, MeshlineError

RESERVED_PREFIX = "meshline.io/"
ORIGIN = "meshline.io/origin"  # "zone": written to this control plane; "global": authored at global
ZONE = "meshline.io/zone"  # the zone whose control plane stored it
LOCAL_ORIGIN = "zone"
GLOBAL_ORIGIN = "global"
DEFAULT_ZONE = "default"

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")
KEY_HINT = "must be [prefix/]name: a name of 1-63 letters, digits, '-', '_' or '.' (prefix: a DNS name)"
VALUE_HINT = "must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
MAX_LABELS = 64


def label_problems(labels: object, path: str = "labels") -> list[FieldProblem]:
    if not isinstance(labels, Mapping):
        return [FieldProblem(path, "must be a mapping of label keys to string values")]
    problems = []
    if len(labels) > MAX_LABELS:
        problems.append(FieldProblem(path, f"at most {MAX_LABELS} labels"))
    for key, value in labels.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            problems.append(FieldProblem(f"{path}.{key}", KEY_HINT))
        elif not isinstance(value, str) or not _VALUE_RE.match(value):
            problems.append(FieldProblem(f"{path}.{key}", VALUE_HINT))
    return problems


def system_labels(zone: str, origin: str = LOCAL_ORIGIN) -> dict[str, str]:
    """What this control plane stamps on what it stores (``origin``: "zone", or "global" on a
    global control plane, whose resources zones receive with it)."""
    if not zone or not _VALUE_RE.match(zone):
        raise MeshlineError(f"zone '{zone}' (MESHLINE_ZONE) {VALUE_HINT}")
    return {ORIGIN: origin, ZONE: zone}
