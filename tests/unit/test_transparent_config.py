"""What `--transparent` turns into: the Dataplane it registers and the capture rules' defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.agent.capture.lifecycle import capture_config
from meshline.agent.config import AgentConfig, TransparentOptions, check_config, dataplane_doc
from meshline.cli.agent import transparent_options
from meshline.core.errors import MeshlineError


def _config(tmp_path: Path, **options: object) -> AgentConfig:
    return AgentConfig(mesh="default", name="orders-1", service="orders", address="10.0.0.2", app_port=8080,
                       inbound_port=8080, work_dir=tmp_path, api_url="https://10.0.0.10:16000", xds_host="10.0.0.10",
                       xds_port=16001, metrics_port=9102, detect_protocol=True,
                       transparent=TransparentOptions(**options))  # type: ignore[arg-type]  # fmt: skip


def test_the_dataplane_names_the_apps_port_and_no_protocol_when_detected(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    check_config(cfg)
    spec = dataplane_doc(cfg)["spec"]
    assert spec["transparent"] == {"outboundPort": 15001, "inboundPort": 15006, "ipv6": False}
    assert spec["inbound"] == [{"port": 8080, "servicePort": 8080, "serviceAddress": "127.0.0.1",
                                "tags": {"service": "orders"}}]  # fmt: skip


def test_control_plane_ports_ssh_and_metrics_are_never_captured(tmp_path: Path) -> None:
    rules = capture_config(_config(tmp_path, app_uid=1000, exclude_outbound_ports=(5432,)))
    assert set(rules.exclude_outbound_ports) == {5432, 15678, 15681, 16000, 16001}
    assert rules.exclude_inbound_ports == (22, 9102)
    assert rules.app_uid == 1000 and set(rules.local_ports) == {8080, 15001}
    assert capture_config(_config(tmp_path)).local_ports == ()  # no app user: nothing to restrict to


def test_transparent_options_from_the_command_line() -> None:
    opts = {"transparent": True, "outbound_capture_port": 15001, "inbound_capture_port": 15006, "dns_port": 0,
            "exclude_inbound_ports": (2222,), "exclude_outbound_ports": (), "exclude_outbound_cidrs": ("10.1.0.0/16",),
            "exclude_uids": (), "app_user": "0"}  # fmt: skip
    got = transparent_options(opts, run_app=True)
    assert got is not None and got.dns_port is None and got.exclude_inbound_ports == (22, 2222) and got.app_uid == 0
    assert transparent_options({**opts, "transparent": False}, run_app=True) is None
    with pytest.raises(MeshlineError, match="--exclude-outbound-cidr 'nope' is not a network"):
        transparent_options({**opts, "exclude_outbound_cidrs": ("nope",)}, run_app=True)
    with pytest.raises(MeshlineError, match="--app-user 'no-such-user-x' is not a user"):
        transparent_options({**opts, "app_user": "no-such-user-x"}, run_app=True)
