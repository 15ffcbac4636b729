"""Timeout golden files (checked by the real Envoy too) and the defaults it shares with the base generator."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshline.render import envoy
from meshline.render.defaults import DEFAULTS
from meshline.xds.snapshot import CLUSTER, ROUTE
from tests.policies.timeout.golden_cases import (
    RESILIENCE_KINDS,
    check_feature,
    features,
    render_feature,
    render_plain,
)

HERE = Path(__file__).parent


@pytest.mark.parametrize("feature", features(HERE))
def test_feature_golden(feature: str, tmp_path: Path) -> None:
    check_feature(HERE, feature, "web-1", tmp_path)


def _cluster(result: object, name: str) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster()
    result.snapshot.slots[CLUSTER].resources[name].any.Unpack(out)  # type: ignore[attr-defined]
    return out


def _route(result: object, name: str) -> route_pb2.RouteConfiguration:
    out = route_pb2.RouteConfiguration()
    result.snapshot.slots[ROUTE].resources[name].any.Unpack(out)  # type: ignore[attr-defined]
    return out


def test_documented_defaults_are_the_base_generators() -> None:
    """Without a policy an outbound gets DEFAULTS: the docs and the renderer must not drift apart."""
    result = render_plain("web-1")
    orders = _cluster(result, "orders")
    assert orders.connect_timeout.ToTimedelta() == DEFAULTS.connect
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    orders.typed_extension_protocol_options[envoy.HTTP_PROTOCOL_OPTIONS].Unpack(opts)
    assert opts.common_http_protocol_options.idle_timeout.ToTimedelta() == DEFAULTS.idle
    http_route = _route(result, "outbound_15001").virtual_hosts[0].routes[0].route
    assert http_route.timeout.ToTimedelta() == DEFAULTS.http_request
    assert not http_route.HasField("max_stream_duration")
    grpc_route = _route(result, "outbound_15002").virtual_hosts[0].routes[0].route
    assert grpc_route.timeout.ToTimedelta() == DEFAULTS.h2_request
    assert envoy.hcm("x").stream_idle_timeout.ToTimedelta() == DEFAULTS.stream_idle
    assert envoy.hcm("x").common_http_protocol_options.idle_timeout.ToTimedelta() == DEFAULTS.idle
    assert not envoy.tcp_proxy("x", "c").HasField("max_downstream_connection_duration")


def test_a_caller_no_policy_selects_is_untouched(tmp_path: Path) -> None:
    """orders-timeouts names web as its source: orders-v1's outbound to inventory stays at the defaults."""
    with_policy = render_feature(HERE, "http", "orders-v1", tmp_path)
    assert with_policy.snapshot.versions() == render_plain("orders-v1").snapshot.versions()
    assert not [a for a in with_policy.applied if a.kind in RESILIENCE_KINDS]
