"""The mesh DNS table, read from the configuration the control plane sends this agent's Envoy.

The transparent outbound listener carries the table (``render/transparent.py``: metadata
``meshline.dns``, JSON with the VIP range, whether bare names resolve, and service -> VIP).
The agent's xDS proxy already forwards every DiscoveryResponse to Envoy; it hands each
listener response to :meth:`DnsTable.observe`, which finds that one listener and takes the
table. So a new service's name resolves in the same push that gives Envoy its chains (never
a VIP Envoy does not route yet), and no second channel to the control plane is needed.

Decoding is done on the protobuf wire format by hand (a few fields of four messages): the
agent does not load Envoy's generated protos (a sidecar's memory budget).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from meshline.xds import names

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
DNS_METADATA = "meshline"  # render.transparent.DNS_METADATA
MAX_NAMES = 65536  # a /16 range


class WireError(ValueError):
    """Not the protobuf message expected."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) of one message: bytes for length-delimited fields, ints otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, value
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise WireError("truncated field")
            yield number, buf[i : i + size]
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise WireError(f"wire type {wire}")


def _first(buf: bytes, number: int) -> bytes:
    for n, v in fields(buf):
        if n == number and isinstance(v, bytes):
            return v
    return b""


def _map_entry(buf: bytes) -> tuple[str, bytes]:
    return _first(buf, 1).decode(), _first(buf, 2)


def dns_json(response: bytes) -> str | None:
    """The DNS table JSON in a DiscoveryResponse, or None when it holds no transparent listener."""
    if _first(response, 4).decode(errors="replace") != LISTENER_TYPE:
        return None
    for n, resource in fields(response):
        if n != 2 or not isinstance(resource, bytes):
            continue
        listener = _first(resource, 2)  # Any.value
        if _first(listener, 1).decode(errors="replace") != names.TRANSPARENT_OUTBOUND_LISTENER:
            continue
        for m, entry in fields(_first(listener, 6)):  # Listener.metadata -> filter_metadata
            if m != 1 or not isinstance(entry, bytes):
                continue
            key, struct = _map_entry(entry)
            if key != DNS_METADATA:
                continue
            for k, item in fields(struct):  # Struct.fields
                if k == 1 and isinstance(item, bytes):
                    name, value = _map_entry(item)
                    if name == "dns":
                        return _first(value, 3).decode()  # Value.string_value
        return ""
    return None


@dataclass
class DnsTable:
    """service -> VIP, as this sidecar was last told; ``changed`` is set on every new table."""

    vips: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)  # ExternalService host -> VIP
    vip_range: str = ""
    bare_names: bool = True
    received: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def observe(self, response: bytes) -> None:
        """Called by the xDS proxy with each message the control plane sends Envoy."""
        try:
            text = dns_json(response)
        except WireError:
            return
        if text is None:
            return
        self.update(text)

    def update(self, text: str) -> None:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            return
        vips = data.get("vips", {})
        if not isinstance(vips, dict):
            return
        hosts = data.get("hosts", {})
        if not isinstance(hosts, dict):
            return
        self.vips = {str(k): str(v) for k, v in list(vips.items())[:MAX_NAMES]}
        self.hosts = {str(k).lower(): str(v) for k, v in list(hosts.items())[:MAX_NAMES]}
        self.vip_range = str(data.get("range", ""))
        self.bare_names = bool(data.get("bare", True))
        self.received = True
        self.changed.set()
        self.changed = asyncio.Event()

    def snapshot(self) -> str:
        """The table as :meth:`update` reads it (what an upgrade hands the new program)."""
        return json.dumps({"vips": self.vips, "hosts": self.hosts, "range": self.vip_range, "bare": self.bare_names})

    def lookup(self, name: str) -> tuple[bool, str | None]:
        """(is a mesh name, its VIP). ``orders.mesh`` is always a mesh name (unknown: no
        address); bare ``orders`` only when it is a service and bare names are on; the host of
        an ExternalService (``api.example.com``) gets its VIP."""
        name = name.rstrip(".").lower()
        if name in self.hosts:
            return True, self.hosts[name]
        if name.endswith(".mesh"):
            return True, self.vips.get(name[: -len(".mesh")])
        if self.bare_names and name in self.vips:
            return True, self.vips[name]
        return False, None
