"""Gateway API Gateway and the routes attached to it -> MeshGateway / MeshGatewayRoute (golden),
and what cannot be translated refused with its field path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshline.core.errors import ValidationError
from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.policies.translate import translators
from meshline.testing.policy_kit import apply_problems

HERE = Path(__file__).parent / "gateway"
KINDS = default_kinds()


def translate(doc: dict[str, Any]) -> list[Resource]:
    for t in translators(KINDS, lambda mesh: {}):
        out = t(doc)
        if out is not None:
            return out
    raise AssertionError("no translator took the document")


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((HERE / "gateway_api.input.yaml").read_text()) if d]


def test_translation_golden() -> None:
    out = [r.to_json() for d in _docs() for r in translate(d)]
    actual = yaml.safe_dump_all(out, sort_keys=False, width=120)
    golden = HERE / "gateway_api.golden.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1" or not golden.exists():
        golden.write_text(actual)
    assert actual == golden.read_text(), "re-run with UPDATE_GOLDEN=1 and review the diff"


def test_the_translated_documents_pass_the_apply_checks() -> None:
    resources = [r for d in _docs() for r in translate(d)]
    assert [r.kind for r in resources] == ["MeshGateway", *["MeshGatewayRoute"] * 5]
    assert apply_problems(resources) == []


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        translate(doc)
    return [str(p) for p in info.value.problems]


def test_refusals_name_the_field() -> None:
    gw = _docs()[0]
    gw["spec"]["listeners"].append({"name": "udp", "port": 53, "protocol": "UDP"})
    gw["spec"]["listeners"][1]["tls"]["certificateRefs"][0]["kind"] = "ConfigMap"
    found = _problems(gw)
    assert any(p.startswith("spec.listeners[5].protocol: 'UDP' listeners are not supported") for p in found), found
    assert any(p.startswith("spec.listeners[1].tls.certificateRefs[0].kind: 'ConfigMap' certificates") for p in found)
    gw = _docs()[0]
    gw["spec"]["listeners"][0]["port"] = 5432  # HTTP where the TCP listener is
    found = _problems(gw)
    assert any(p.startswith("spec.listeners[4].protocol: port 5432 is also listeners[0] (HTTP)") for p in found), found
    route = _docs()[2]
    route["spec"]["parentRefs"][0]["port"] = 8443
    assert any(p.startswith("spec.parentRefs[0].port: attach by listener name") for p in _problems(route))


def test_a_route_whose_listener_or_hostname_does_not_fit_is_refused_at_apply() -> None:
    docs = _docs()
    docs[2]["spec"]["parentRefs"][0]["sectionName"] = "https"
    docs[3]["spec"]["parentRefs"][0]["sectionName"] = "web"  # a GRPCRoute on web: fine by protocol ...
    docs[3]["spec"]["hostnames"] = ["grpc.example.test"]  # ... but not by hostname
    found = [str(p) for p in apply_problems([r for d in docs for r in translate(d)])]
    assert "spec.parents[0].listener: gateway 'edge' has no listener 'https' (its listeners: http, web, apps," \
           " passthrough, db)" in found
    assert any(p.startswith("spec.parents[0].listener: listener 'web' serves only web.example.test") for p in found)
