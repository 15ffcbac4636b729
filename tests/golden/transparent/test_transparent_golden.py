"""Transparent rendering: the capture listeners of a transparent caller and of a service whose
protocol is detected, as golden files, each also accepted by the real Envoy (``--mode validate``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2

from meshline.render.render import RenderResult
from meshline.testing.golden import check_golden, load_resources, render_named
from meshline.testing.policy_kit import envoy_accepts as kit_envoy_accepts
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, LISTENER

HERE = Path(__file__).parent
INPUT = HERE / "mesh.input.yaml"
DATAPLANES = ["web-1", "echo-1", "orders-1"]


def envoy_accepts(result: RenderResult, work: Path) -> None:
    """Envoy's own verdict on the rendering (the kit adds the agent's SDS and xDS clusters)."""
    kit_envoy_accepts(result, work, node=names.node_id("default", "validate"), cluster="validate")


def _listener(result: RenderResult, name: str) -> listener_pb2.Listener:
    lst = listener_pb2.Listener()
    result.snapshot.slots[LISTENER].resources[name].any.Unpack(lst)
    return lst


@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_golden(dataplane: str) -> None:
    check_golden(INPUT, dataplane, HERE / "golden" / f"{dataplane}.golden.yaml")


@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_envoy_accepts(dataplane: str, tmp_path: Path) -> None:
    envoy_accepts(render_named(load_resources(INPUT.read_text()), dataplane), tmp_path)


def test_the_outbound_listener_routes_vips_and_instances_and_passes_the_rest_through() -> None:
    result = render_named(load_resources(INPUT.read_text()), "web-1")
    lst = _listener(result, names.TRANSPARENT_OUTBOUND_LISTENER)
    assert lst.address.socket_address.port_value == 15001
    chains = {c.name: c.filter_chain_match for c in lst.filter_chains}
    vip80 = chains["outbound_orders_vip_80"]
    assert [p.address_prefix for p in vip80.prefix_ranges] == ["240.240.0.10"] and vip80.destination_port.value == 80
    assert chains["outbound_orders_vip_8080"].destination_port.value == 8080
    direct = chains["outbound_orders_direct_8080"]
    assert sorted(p.address_prefix for p in direct.prefix_ranges) == ["10.0.0.2", "10.0.0.3"]
    # echo has no protocol tag: one chain per detected protocol, told apart by http_inspector
    assert list(chains["outbound_echo_http_vip_7000"].application_protocols) == ["http/1.1"]
    assert list(chains["outbound_echo_h2_vip_7000"].application_protocols) == ["h2c"]
    assert list(chains["outbound_echo_vip_7000"].application_protocols) == []
    assert lst.default_filter_chain.name == names.PASSTHROUGH_CLUSTER
    assert names.PASSTHROUGH_CLUSTER in result.snapshot.slots[CLUSTER].resources
    kinds = {(a.kind, a.name) for a in result.applied}
    assert {("HTTPRoute", "orders-split"), ("Retry", "orders-retry")} <= kinds
    assert not any(n.startswith("inbound_8000") for n in result.snapshot.slots[LISTENER].resources)


def test_a_mesh_without_passthrough_refuses_other_destinations(tmp_path: Path) -> None:
    text = INPUT.read_text().replace("kind: Mesh\nname: default\n", "kind: Mesh\nname: default\nspec: {transparentProxy: {passthrough: false}}\n")
    result = render_named(load_resources(text), "web-1")
    # the old boolean still reads: false is "declared" (only mesh services and ExternalServices)
    assert _listener(result, names.TRANSPARENT_OUTBOUND_LISTENER).default_filter_chain.name == names.BLOCKED_LISTENER


def test_the_inbound_listener_takes_only_the_apps_ports_over_mtls_when_strict() -> None:
    result = render_named(load_resources(INPUT.read_text()), "echo-1")
    lst = _listener(result, names.TRANSPARENT_INBOUND_LISTENER)
    assert not lst.HasField("default_filter_chain")  # strict: any other port of the host is refused
    matches = [c.filter_chain_match for c in lst.filter_chains]
    assert {m.destination_port.value for m in matches} == {7000}
    assert all(m.transport_protocol == "tls" for m in matches)
    assert sorted(tuple(m.application_protocols) for m in matches) == [(), ("h2",), ("http/1.1",)]
