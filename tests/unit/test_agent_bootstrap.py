"""The bootstrap the agent writes: typed protos, checked by the real Envoy binary."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2

from meshline.agent.bootstrap import build_bootstrap, to_yaml, write_bootstrap
from meshline.agent.config import AgentConfig, Upstream
from meshline.agent.envoy import envoy_args
from meshline.agent.process import find_envoy
from meshline.xds import names


def config(tmp_path: Path, **kw: object) -> AgentConfig:
    base: dict[str, object] = dict(
        mesh="default", name="orders-1", service="orders", address="127.0.0.1", app_port=8080,
        inbound_port=18080, work_dir=tmp_path, api_url="http://127.0.0.1:15681",
        xds_host="127.0.0.1", xds_port=15678, tags={"version": "v1", "zone": "eu-1"},
        upstreams=[Upstream("payments", 9001)],
    )
    base.update(kw)
    return AgentConfig(**base)  # type: ignore[arg-type]


def validate(cfg: AgentConfig) -> None:
    write_bootstrap(cfg.bootstrap_path, build_bootstrap(cfg))
    out = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(cfg.bootstrap_path), "--disable-hot-restart",
         "--log-level", "error"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


def clusters(cfg: AgentConfig) -> dict[str, cluster_pb2.Cluster]:
    return {c.name: c for c in build_bootstrap(cfg).static_resources.clusters}


def test_envoy_accepts_the_bootstrap(tmp_path: Path) -> None:
    validate(config(tmp_path))


def test_envoy_accepts_the_bootstrap_with_token_tls_and_a_hostname(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(self_signed_ca())
    cfg = config(tmp_path, token="s3cret", ca_file=ca, xds_host="localhost")
    validate(cfg)
    assert "s3cret" not in cfg.bootstrap_path.read_text()  # the agent's xDS proxy holds the token


def test_identity_admin_and_ads(tmp_path: Path) -> None:
    b = build_bootstrap(config(tmp_path))
    assert b.node.id == names.node_id("default", "orders-1") == "default.orders-1"
    assert b.node.cluster == "orders"
    assert b.node.locality.zone == "eu-1"
    assert not b.admin.address.HasField("socket_address")  # no TCP port any local user could reach
    assert (b.admin.address.pipe.path, b.admin.address.pipe.mode) == (str(tmp_path / "admin.sock"), 0o600)
    ads = b.dynamic_resources.ads_config
    assert ads.api_type == config_source_pb2.ApiConfigSource.GRPC
    assert ads.transport_api_version == config_source_pb2.V3
    assert ads.set_node_on_first_message_only
    assert [g.envoy_grpc.cluster_name for g in ads.grpc_services] == [names.XDS_CLUSTER]
    assert not ads.grpc_services[0].initial_metadata  # no token, no header
    for source in (b.dynamic_resources.cds_config, b.dynamic_resources.lds_config):
        assert source.HasField("ads") and source.resource_api_version == config_source_pb2.V3


def test_xds_cluster_is_the_agents_proxy_whatever_the_control_plane(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(self_signed_ca())
    for cfg in (config(tmp_path, xds_host="10.1.2.3", xds_port=25678),
                config(tmp_path, xds_host="cp.example.internal", ca_file=ca, token="s3cret")):
        xds = clusters(cfg)[names.XDS_CLUSTER]
        assert xds.type == cluster_pb2.Cluster.STATIC
        pipe = xds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe
        assert pipe.path == str(cfg.xds_socket) == str(tmp_path / "xds.sock")
        assert xds.connect_timeout.ToMilliseconds() <= 2000
        assert not xds.HasField("transport_socket")  # TLS to the control plane is the proxy's
    assert "http2_protocol_options" in to_yaml(build_bootstrap(config(tmp_path)))


def test_sds_cluster_points_at_the_socket_in_the_work_dir(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    sds = clusters(cfg)[names.SDS_CLUSTER]
    pipe = sds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe
    assert pipe.path == str(tmp_path / "sds.sock") == str(cfg.sds_path)
    custom = config(tmp_path, sds_socket=Path("/run/x/sds.sock"))
    pipe = clusters(custom)[names.SDS_CLUSTER].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe
    assert pipe.path == "/run/x/sds.sock"


def test_the_token_never_reaches_envoy(tmp_path: Path) -> None:
    b = build_bootstrap(config(tmp_path, token="s3cret"))
    assert not b.dynamic_resources.ads_config.grpc_services[0].initial_metadata
    assert "s3cret" not in to_yaml(b)  # (the proxy sends it: test_agent_xds_proxy.py)


def test_written_file_is_private_yaml(tmp_path: Path) -> None:
    cfg = config(tmp_path, token="s3cret")
    write_bootstrap(cfg.bootstrap_path, build_bootstrap(cfg))
    assert cfg.bootstrap_path.stat().st_mode & 0o077 == 0
    doc = yaml.safe_load(cfg.bootstrap_path.read_text())
    assert doc["node"]["id"] == "default.orders-1"
    assert not list(tmp_path.glob("*.tmp"))


def test_envoy_command_line(tmp_path: Path) -> None:
    cfg = config(tmp_path, envoy_concurrency=2, drain_seconds=2.5)
    args = envoy_args("/bin/envoy", cfg)
    assert args[:3] == ["/bin/envoy", "-c", str(cfg.bootstrap_path)]
    assert "--disable-hot-restart" not in args  # hot restart: how an upgrade replaces Envoy
    assert args[args.index("--restart-epoch") + 1] == "0" and "--use-dynamic-base-id" in args
    assert args[args.index("--socket-mode") + 1] == "600"
    assert int(args[args.index("--parent-shutdown-time-s") + 1]) > 3  # after the drain
    child = envoy_args("/bin/envoy", cfg, epoch=1, base_id=42)
    assert child[child.index("--restart-epoch") + 1] == "1" and child[child.index("--base-id") + 1] == "42"
    assert "--use-dynamic-base-id" not in child
    assert args[args.index("--concurrency") + 1] == "2"
    assert args[args.index("--log-level") + 1] == "warn"
    assert args[args.index("--drain-time-s") + 1] == "3"


def self_signed_ca() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_log_rotation(tmp_path: Path) -> None:
    from meshline.agent.envoy import rotate

    log = tmp_path / "envoy.log"
    rotate(log)  # nothing yet
    log.write_text("x" * 20)
    rotate(log, max_bytes=100)
    assert log.exists()
    rotate(log, max_bytes=10)
    assert not log.exists() and (tmp_path / "envoy.log.1").read_text() == "x" * 20
