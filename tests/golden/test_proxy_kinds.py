"""Proxy kinds (render/proxies.py): each has its own generators and goldens, the real Envoy
accepts each, and the policy framework shapes a gateway's outbounds as it does a sidecar's."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2

from meshline.render.sections import SectionId
from meshline.testing.golden import check_golden, load_resources, render_named
from meshline.testing.policy_kit import envoy_accepts, problems
from meshline.xds.snapshot import LISTENER

HERE = Path(__file__).parent / "proxies"
INPUT = HERE / "mesh.input.yaml"
PROXIES = {"edge-1": "gateway", "ingress-1": "zone-ingress", "egress-1": "zone-egress", "orders-1": "sidecar"}


def rendered(name: str):  # type: ignore[no-untyped-def]
    return render_named(load_resources(INPUT.read_text()), name)


@pytest.mark.parametrize("dataplane", sorted(PROXIES))
def test_golden(dataplane: str) -> None:
    check_golden(INPUT, dataplane, HERE / f"{dataplane}.golden.yaml")


@pytest.mark.parametrize("dataplane", sorted(PROXIES))
def test_envoy_accepts(dataplane: str, tmp_path: Path) -> None:
    envoy_accepts(rendered(dataplane), tmp_path, node=f"default.{dataplane}", cluster=dataplane)


@pytest.mark.parametrize("dataplane", sorted(PROXIES))
def test_sections_are_of_the_proxy_kind(dataplane: str) -> None:
    assert {p.id.proxy for p in rendered(dataplane).sections} == {PROXIES[dataplane]}


def test_a_gateway_has_an_entry_listener_and_policy_shaped_outbounds() -> None:
    result = rendered("edge-1")
    assert [p.id for p in result.sections] == [SectionId("gateway", "listener", 8443), SectionId("gateway", "outbound", 15001)]
    [applied] = result.applied
    assert (applied.kind, applied.name, applied.section) == ("Retry", "orders-retries", SectionId("gateway", "outbound", 15001))


@pytest.mark.parametrize("dataplane", ["ingress-1", "egress-1"])
def test_a_zone_proxy_passes_each_service_through_by_sni(dataplane: str) -> None:
    lst = listener_pb2.Listener()
    [packed] = rendered(dataplane).snapshot.slots[LISTENER].resources.values()
    packed.any.Unpack(lst)
    assert [c.filter_chain_match.server_names[0] for c in lst.filter_chains] == [
        "orders.default.mesh", "payments.default.mesh"]  # fmt: skip
    assert all(c.filter_chain_match.transport_protocol == "tls" and not c.HasField("transport_socket")
               for c in lst.filter_chains)  # never terminates TLS  # fmt: skip


def test_a_zone_proxy_listens_on_one_port_and_has_no_outbounds() -> None:
    found = problems({"kind": "Dataplane", "mesh": "default", "name": "z", "spec": {
        "proxy": "zone-ingress", "address": "10.0.0.1", "outbound": [{"port": 15001, "service": "orders"}],
        "inbound": [{"port": 1, "servicePort": 1, "tags": {"service": "z"}}, {"port": 2, "servicePort": 2, "tags": {"service": "z"}}]}})  # fmt: skip
    assert found == [
        "spec.inbound: a zone-ingress listens on one port; list exactly one inbound",
        "spec.outbound: a zone-ingress reaches every service by SNI; remove the outbounds",
    ]
