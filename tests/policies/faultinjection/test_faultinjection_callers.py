"""Which caller a rule matches: the regex Envoy runs on x-forwarded-client-cert.

Envoy's safe_regex must match the whole header value (like ``re.fullmatch``; RE2 and
Python agree on this syntax), so these checks run the rendered regex the same way.
"""

from __future__ import annotations

import re

from meshline.kinds import default_kinds
from meshline.policies.common.callers import identity_matcher
from meshline.render.mesh_snapshot import MeshSnapshot

MESH = MeshSnapshot.build(default_kinds().decode({"kind": "Mesh", "name": "default"}), [], revision=1)
ORDERS = "By=spiffe://meshline.local/default/orders;Hash=ed02650d8b3462"


def matches(services: list[str], xfcc: str) -> bool:
    m = identity_matcher(MESH, services)
    return re.fullmatch(m.string_match.safe_regex.regex, xfcc) is not None


def test_the_caller_named_by_uri_matches() -> None:
    assert matches(["web"], f"{ORDERS};URI=spiffe://meshline.local/default/web")
    assert matches(["mobile", "web"], f"{ORDERS};URI=spiffe://meshline.local/default/web")
    assert matches(["web"], "URI=spiffe://meshline.local/default/web;DNS=web.example")


def test_other_callers_do_not_match() -> None:
    assert not matches(["web"], f"{ORDERS};URI=spiffe://meshline.local/default/web-admin")
    assert not matches(["web"], f"{ORDERS};URI=spiffe://meshline.local/other-mesh/web")
    assert not matches(["web"], f"{ORDERS};URI=spiffe://meshline-local/default/web")  # '.' is literal
    # the server's own identity (By=) is not the caller
    assert not matches(["orders"], f"{ORDERS};URI=spiffe://meshline.local/default/web")
