"""The gateway generator (policies/gateway): a MeshGateway's listeners and attached routes as
Envoy listeners, pinned by a golden and accepted by the real Envoy."""

from __future__ import annotations

from pathlib import Path

from envoy.config.listener.v3 import listener_pb2

from meshline.testing.golden import check_golden, load_resources, render_named
from meshline.testing.policy_kit import envoy_accepts
from meshline.xds.snapshot import LISTENER

HERE = Path(__file__).parent / "gateway"
INPUT = HERE / "edge.input.yaml"


def _rendered():  # type: ignore[no-untyped-def]
    return render_named(load_resources(INPUT.read_text()), "edge-1")


def test_golden() -> None:
    check_golden(INPUT, "edge-1", HERE / "edge-1.golden.yaml")


def test_envoy_accepts(tmp_path: Path) -> None:
    envoy_accepts(_rendered(), tmp_path, node="default.edge-1", cluster="edge")


def test_one_listener_per_port_with_a_chain_per_sni_name() -> None:
    slot = _rendered().snapshot.slot(LISTENER)
    listeners = {}
    for name, packed in slot.resources.items():
        lst = listener_pb2.Listener()
        packed.any.Unpack(lst)
        listeners[name] = lst
    assert sorted(listeners) == ["gateway_5432", "gateway_8080", "gateway_8443"]
    tls = listeners["gateway_8443"]
    assert [list(c.filter_chain_match.server_names) for c in tls.filter_chains] == [
        ["web.example.test"], ["*.apps.test"], ["secure.example.test"]]
    # termination chains hold a TLS context, the passthrough chain none (the gateway never decrypts it)
    assert [c.HasField("transport_socket") for c in tls.filter_chains] == [True, True, False]
