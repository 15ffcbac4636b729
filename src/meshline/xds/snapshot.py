"""Immutable per-dataplane snapshots: one typed slot per xDS type, content-hash versions.

Resources are stored packed (an ``Any``, kept serialized: :attr:`Packed.wire`) and
hashed once, so building the response for a stream and computing whether a type changed
are both cheap: sections are shared by many dataplanes, and a response is a join of bytes
already made (see ``stream.Prepared``), with no message built per stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from google.protobuf import any_pb2
from google.protobuf.message import Message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# The order Envoy wants them in on an ADS stream: clusters before their endpoints,
# listeners before their routes.
TYPES_IN_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}
# Types Envoy subscribes to by name (the others are wildcard: send everything).
BY_NAME = frozenset({ENDPOINT, ROUTE, SECRET})


RESOURCES_FIELD = 2  # DiscoveryResponse.resources (repeated google.protobuf.Any)


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (string, bytes, message)."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


@dataclass(frozen=True)
class Packed:
    """One resource, kept once: as the bytes of its ``Any`` (what goes on the wire)."""

    name: str
    wire: bytes  # google.protobuf.Any, serialized
    digest: bytes

    @property
    def any(self) -> any_pb2.Any:
        """The resource as an ``Any`` message (parsed on each access; sending never needs it)."""
        return any_pb2.Any.FromString(self.wire)

    @cached_property
    def prefix(self) -> bytes:
        """Tag and length that make :attr:`wire` one ``DiscoveryResponse.resources`` entry."""
        return varint(RESOURCES_FIELD << 3 | 2) + varint(len(self.wire))


def pack_any(msg: Message) -> any_pb2.Any:
    """Like ``Any.Pack`` but deterministic (map order), so equal configs hash equal."""
    return any_pb2.Any(
        type_url="type.googleapis.com/" + msg.DESCRIPTOR.full_name,
        value=msg.SerializeToString(deterministic=True),
    )


def pack(name: str, msg: Message) -> Packed:
    value = msg.SerializeToString(deterministic=True)
    wire = length_delimited(1, ("type.googleapis.com/" + msg.DESCRIPTOR.full_name).encode())
    wire += length_delimited(2, value)  # = Any{type_url, value} on the wire
    return Packed(name, wire, hashlib.blake2b(value, digest_size=16).digest())


@dataclass(frozen=True)
class TypeSlot:
    resources: Mapping[str, Packed]
    version: str

    @classmethod
    def of(cls, items: Iterable[Packed]) -> TypeSlot:
        res = {p.name: p for p in items}
        h = hashlib.blake2b(digest_size=8)
        for name in sorted(res):
            h.update(name.encode())
            h.update(res[name].digest)
        return cls(res, h.hexdigest())

    def holds(self, items: Mapping[str, Packed]) -> bool:
        """Exactly these resources (same names, same content): the slot can be reused as is."""
        mine = self.resources
        if len(mine) != len(items):
            return False
        for name, packed in items.items():
            have = mine.get(name)
            if have is None or (have is not packed and have.digest != packed.digest):
                return False
        return True

    def subset(self, names: Iterable[str]) -> list[any_pb2.Any]:
        return [self.resources[n].any for n in names if n in self.resources]

    def all(self) -> list[any_pb2.Any]:
        return [self.resources[n].any for n in sorted(self.resources)]

    def digests(self, names: Iterable[str]) -> tuple[bytes, ...]:
        """Content of the named resources (b"" for a missing one), to tell whether any changed."""
        res = self.resources
        return tuple(p.digest if (p := res.get(n)) is not None else b"" for n in names)

    def encoded(self, names: Iterable[str] | None = None) -> tuple[bytes, int]:
        """(``resources`` entries on the wire, how many) for ``names`` in order, or all (sorted).

        Joined per call, not kept: a slot belongs to one dataplane, and keeping its bytes
        would double the memory of every config for one join saved per push.
        """
        chosen = sorted(self.resources) if names is None else names
        found = [self.resources[n] for n in chosen if n in self.resources]
        return b"".join(part for p in found for part in (p.prefix, p.wire)), len(found)


EMPTY = TypeSlot({}, TypeSlot.of(()).version)


@dataclass(frozen=True)
class Snapshot:
    slots: Mapping[str, TypeSlot] = field(default_factory=dict)

    @classmethod
    def build(cls, resources: Mapping[str, Iterable[Packed]]) -> Snapshot:
        return cls({t: TypeSlot.of(items) for t, items in resources.items()})

    def slot(self, type_url: str) -> TypeSlot:
        return self.slots.get(type_url, EMPTY)

    def version(self, type_url: str) -> str:
        return self.slot(type_url).version

    def versions(self) -> dict[str, str]:
        return {SHORT.get(t, t): s.version for t, s in self.slots.items()}

    def versions_to_ack(self) -> dict[str, str]:
        """The versions a sidecar ACKs once it runs this config. A by-name type left with no
        resource (its last EDS cluster became a DNS one) is not among them: Envoy, watching
        nothing of that type any more, takes the empty response without ACKing it."""
        return {SHORT.get(t, t): s.version for t, s in self.slots.items() if s.resources or t not in BY_NAME}
