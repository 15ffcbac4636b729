"""Control-plane settings: command-line options override environment variables override defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from meshline.core.errors import MeshlineError
from meshline.core.labels import DEFAULT_ZONE
from meshline.core.locations import DEFAULT_API_PORT, DEFAULT_XDS_PORT, default_data_dir

__all__ = ["DEFAULT_API_PORT", "DEFAULT_XDS_PORT", "Settings", "default_data_dir", "split_address"]


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise MeshlineError(f"{name} '{raw}' must be a number of seconds (e.g. {default:g})") from None
    if value <= 0:
        raise MeshlineError(f"{name} '{raw}' must be more than 0 seconds (e.g. {default:g})")
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw and not raw.isdigit():
        raise MeshlineError(f"{name} '{raw}' must be a whole number (0: derived from the open-file limit)")
    return int(raw) if raw else default


def split_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MeshlineError(f"{what} '{value}' must look like HOST:PORT (e.g. 127.0.0.1:{DEFAULT_API_PORT})")
    return host.strip("[]") or "0.0.0.0", int(port)


MODES = ("standalone", "global", "zone")


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    store_url: str = field(default_factory=lambda: os.environ.get("MESHLINE_STORE_URL", ""))
    api_address: str = field(
        default_factory=lambda: os.environ.get("MESHLINE_API_ADDRESS", f"127.0.0.1:{DEFAULT_API_PORT}")
    )
    xds_address: str = field(
        default_factory=lambda: os.environ.get("MESHLINE_XDS_ADDRESS", f"127.0.0.1:{DEFAULT_XDS_PORT}")
    )
    debounce: float = 0.01
    create_default_mesh: bool = True
    # Authenticate API and xDS callers with tokens (off only for the local demo / tests).
    auth: bool = field(default_factory=lambda: os.environ.get("MESHLINE_AUTH", "on") != "off")
    # HTTPS for the REST API: "auto" serves it whenever auth is on and the API listens
    # beyond loopback (tokens must not cross a network in clear); "on" / "off" force it.
    api_tls: str = field(default_factory=lambda: os.environ.get("MESHLINE_API_TLS", "auto"))

    def api_tls_enabled(self) -> bool:
        if self.api_tls not in ("auto", "on", "off"):
            raise MeshlineError(f"MESHLINE_API_TLS '{self.api_tls}' must be auto, on or off")
        if self.api_tls != "auto":
            return self.api_tls == "on"
        host, _ = split_address(self.api_address, "API address")
        return self.auth and host not in ("127.0.0.1", "::1", "localhost")
    # Seconds a dataplane may be disconnected before its endpoints are marked unhealthy.
    offline_after: float = 10.0
    # Redis for global rate limits (RateLimit conf.global); optional until such a policy exists.
    redis_url: str = field(
        default_factory=lambda: os.environ.get("MESHLINE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    # Connections to the API and xDS ports (see controlplane.limits and docs/security.md):
    # seconds a client may take for its TLS handshake (API) / gRPC handshake (xDS);
    handshake_timeout: float = field(default_factory=lambda: _env_float("MESHLINE_HANDSHAKE_TIMEOUT_S", 10.0))
    # seconds a connection may sit without a request: API, before its (next) request head is
    # complete; xDS, without any call;
    idle_timeout: float = field(default_factory=lambda: _env_float("MESHLINE_IDLE_TIMEOUT_S", 30.0))
    # connections each port holds at most (0: derived from the open-file limit).
    max_connections: int = field(default_factory=lambda: _env_int("MESHLINE_MAX_CONNECTIONS", 0))
    # Dataplane status shared through the store (controlplane.shared_status): this replica's
    # name (default: host-pid-random), seconds between status batches, seconds between its
    # heartbeats; a replica silent for three heartbeats counts as gone (its sidecars offline).
    # The zone this control plane serves: stamped on everything it stores (label meshline.io/zone).
    zone: str = field(default_factory=lambda: os.environ.get("MESHLINE_ZONE", DEFAULT_ZONE))
    replica_id: str = field(default_factory=lambda: os.environ.get("MESHLINE_REPLICA_ID", ""))
    status_flush: float = field(default_factory=lambda: _env_float("MESHLINE_STATUS_FLUSH_S", 1.0))
    replica_beat: float = field(default_factory=lambda: _env_float("MESHLINE_REPLICA_BEAT_S", 5.0))
    # Multi-zone (docs/multi-zone.md): "standalone" (one control plane, the default), "global"
    # (authoring only; zones connect to it) or "zone" (serves its dataplanes, synced with
    # ``global_url`` as ``zone`` with the zone token in ``zone_token_file``).
    mode: str = field(default_factory=lambda: os.environ.get("MESHLINE_MODE", "standalone"))
    global_url: str = field(default_factory=lambda: os.environ.get("MESHLINE_GLOBAL", ""))
    zone_token_file: Path | None = field(
        default_factory=lambda: Path(os.environ["MESHLINE_ZONE_TOKEN_FILE"]) if os.environ.get("MESHLINE_ZONE_TOKEN_FILE") else None
    )
    global_ca_file: Path | None = field(
        default_factory=lambda: Path(os.environ["MESHLINE_GLOBAL_CA_FILE"]) if os.environ.get("MESHLINE_GLOBAL_CA_FILE") else None
    )
    # Where Grafana serves Meshline's dashboards (telemetry/grafana/): the dashboard links to them.
    grafana_url: str = field(default_factory=lambda: os.environ.get("MESHLINE_GRAFANA_URL", ""))

    def check_mode(self) -> None:
        """A zone needs global's address and its token; errors name the option to pass."""
        if self.mode not in MODES:
            raise MeshlineError(f"--mode '{self.mode}' must be one of {', '.join(MODES)}")
        if self.mode != "zone":
            return
        missing = [opt for opt, value in (("--zone", self.zone != DEFAULT_ZONE), ("--global", self.global_url),
                                          ("--zone-token-file", self.zone_token_file)) if not value]  # fmt: skip
        if missing:
            raise MeshlineError(
                f"--mode zone needs {', '.join(missing)}: the zone's name, global's API URL and the zone token"
                " issued at global (`meshline token issue --kind zone --zone NAME`)"
            )

    @property
    def render_zone(self) -> str | None:
        """The zone rendering localizes to (zone mode only; standalone renders as before)."""
        return self.zone if self.mode == "zone" else None

    @property
    def replica_ttl(self) -> float:
        return 3 * self.replica_beat
