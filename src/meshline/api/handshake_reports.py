"""The server side of a failed xDS TLS handshake, in one line that says who and why.

gRPC's C core sees a failed handshake but neither names the peer nor lets Python know
(at INFO it prints ``Handshake failed ... TLSV1_ALERT_DECRYPT_ERROR``, nothing else; Meshline
keeps it at ERROR, see cli.main.quiet_grpc_core). The agent that failed it knows everything:
it tells the API (``POST /api/v1/xds/handshake-failures``, any valid token) what it dialled,
with which CA and what went wrong, and the control plane logs it here, beside its own CA, so
the operator of either side reads the same sentence. A client that is not an agent (a port
scanner, curl) is not reported: its connection just fails.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from meshline.api.auth import Principal
from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.ratelog import RateLimitedLog

log = logging.getLogger("meshline.xds")
_reports = RateLimitedLog(log)  # one line per caller and address per interval
FIELDS = {"tried": 200, "source": 200, "caFile": 300, "caSha256": 64, "reason": 300}
_PRINTABLE = re.compile(r"[^\x20-\x7e]")
# (lengths are checked in parse: a JSON surrogate pair is one character to Python, two to some clients)
SCHEMA = {"type": "object", "properties": {name: {"type": "string", "description": f"at most {limit} characters"}
                                          for name, limit in FIELDS.items()}}  # fmt: skip


def parse(body: Any) -> dict[str, str]:
    """The report's fields, bounded and made printable (they end up in the log)."""
    if not isinstance(body, dict):
        raise ValidationError([FieldProblem("", f"the body must be an object with {', '.join(FIELDS)}")])
    out = {}
    for name, limit in FIELDS.items():
        value = body.get(name, "")
        if not isinstance(value, str):
            raise ValidationError([FieldProblem(name, "must be a string")])
        if len(value) > limit:
            raise ValidationError([FieldProblem(name, f"at most {limit} characters")])
        out[name] = _PRINTABLE.sub("?", value)
    return out


def who(principal: Principal, peer: str | None) -> str:
    if principal.dataplane:
        name = f"dataplane {principal.dataplane}"
    elif principal.service:
        name = f"an agent of service {principal.service}"
    else:
        name = f"a client with token '{principal.name}'"
    mesh = f" (mesh {principal.mesh})" if principal.mesh else ""
    return f"{name}{mesh} from {peer or 'an unknown address'}"


def line(principal: Principal, peer: str | None, report: dict[str, str], own_ca: str) -> str:
    """``xDS TLS handshake failed: <who> dialled <address> (<source>) ...``"""
    ca = report["caSha256"]
    if ca and own_ca and ca != own_ca:
        verdict = f"it trusts CA {ca} ({report['caFile'] or '?'}), not this control plane's CA {own_ca}"
    elif ca and ca == own_ca:
        verdict = (f"it trusts this control plane's CA ({ca}), so the server at {report['tried']} is not this"
                   " control plane (another one's xDS, or something in between)")  # fmt: skip
    else:
        verdict = "it gave no CA fingerprint"
    return (f"xDS TLS handshake failed: {who(principal, peer)} dialled {report['tried'] or '?'}"
            f" ({report['source'] or '?'}): {report['reason'] or '?'}; {verdict}; its agent gets the right"
            " address and CA from GET /api/v1/xds unless --xds-address or --cp-ca-file pin others")  # fmt: skip


def record(principal: Principal, peer: str | None, report: dict[str, str], own_ca: str) -> str:
    text = line(principal, peer, report, own_ca)
    _reports.warning(f"{principal.name}|{peer}|{report['tried']}", "%s", text)
    return text
