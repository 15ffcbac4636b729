"""The ADS (state of the world) stream protocol as a sans-IO state machine.

Requests in, responses and events out; no sockets, no clock, no asyncio, so every
rule below is tested with plain function calls (tests/unit/test_xds_stream.py).

Rules (see ENVOY-NOTES.md):

* A request whose ``response_nonce`` is not the nonce of our last response of that
  type is stale and ignored.
* A request carrying our last nonce acknowledges that response: an ACK when
  ``error_detail`` is empty, a NACK otherwise. After a NACK the rejected version is
  not sent again; Envoy keeps its last good config until the snapshot changes.
* We answer a type only when Envoy has a request open for it, and only with
  something new (a changed version; for types subscribed by name, changed names or a
  change in one of the named resources). Otherwise the request waits until the next
  snapshot.
* Warming trap: after sending clusters, the next EDS request is answered even if
  nothing changed (Envoy re-asks with the same version for a changed cluster and
  would otherwise wait ``initial_fetch_timeout``); likewise RDS after listeners.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from meshline.xds.snapshot import (
    BY_NAME,
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TYPES_IN_ORDER,
    Snapshot,
    length_delimited,
)

# Sending type K makes the next request of type V due even if unchanged.
_WARMS = {CLUSTER: ENDPOINT, LISTENER: ROUTE}


@dataclass(frozen=True)
class Ack:
    type_url: str
    version: str


@dataclass(frozen=True)
class Nack:
    type_url: str
    version: str
    message: str


@dataclass(frozen=True)
class Sent:
    type_url: str
    version: str
    count: int


Event = Ack | Nack | Sent


@dataclass
class TypeState:
    nonce: str = ""
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    sent_digests: tuple[bytes, ...] = ()  # by-name types: what the subscribed resources were when sent
    acked_version: str = ""
    names: frozenset[str] = frozenset()
    open_request: bool = False  # Envoy is waiting for a response of this type
    due: bool = False  # warming trap: answer the next request even if unchanged
    rejected_version: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A response, ready to send: its ``resources`` already on the wire (shared bytes).

    ``serialize()`` appends version, type and nonce as raw protobuf fields (field order does
    not matter on the wire), so no message is built per stream; ``message()`` is the same
    response as a ``DiscoveryResponse``, for tests and for adapters that want one.
    """

    type_url: str
    version: str
    nonce: str
    resources: bytes  # encoded DiscoveryResponse.resources entries
    count: int

    def serialize(self) -> bytes:
        return (
            length_delimited(1, self.version.encode())
            + self.resources
            + length_delimited(4, self.type_url.encode())
            + length_delimited(5, self.nonce.encode())
        )

    def message(self) -> discovery_pb2.DiscoveryResponse:
        return discovery_pb2.DiscoveryResponse.FromString(self.serialize())


@dataclass
class Output:
    prepared: list[Prepared] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def responses(self) -> list[discovery_pb2.DiscoveryResponse]:
        return [p.message() for p in self.prepared]


class AdsStream:
    def __init__(self) -> None:
        self.node_id: str = ""
        self.snapshot: Snapshot | None = None
        self.types: dict[str, TypeState] = {}
        self._nonce = 0

    def state(self, type_url: str) -> TypeState:
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = TypeState()
        return st

    # -- inputs --------------------------------------------------------------------
    def receive(self, req: discovery_pb2.DiscoveryRequest) -> Output:
        out = Output()
        if req.HasField("node") and req.node.id:
            self.node_id = req.node.id
        st = self.state(req.type_url)
        if req.response_nonce:
            if req.response_nonce != st.nonce:
                return out  # stale: an answer to a response Envoy has since replaced
            if req.HasField("error_detail") and req.error_detail.message:
                st.rejected_version = st.sent_version
                out.events.append(Nack(req.type_url, st.sent_version or "", req.error_detail.message))
            else:
                st.acked_version = req.version_info
                st.rejected_version = None
                out.events.append(Ack(req.type_url, req.version_info))
        st.names = frozenset(req.resource_names)
        st.open_request = True
        self._answer(req.type_url, out)
        return out

    def update(self, snapshot: Snapshot) -> Output:
        self.snapshot = snapshot
        out = Output()
        for type_url in TYPES_IN_ORDER:
            if type_url in self.types:
                self._answer(type_url, out, answer_due=False)
        for type_url in self.types.keys() - set(TYPES_IN_ORDER):
            self._answer(type_url, out, answer_due=False)
        return out

    # -- decisions -----------------------------------------------------------------
    def _answer(self, type_url: str, out: Output, answer_due: bool = True) -> None:
        # A due (unchanged) type is answered only when Envoy re-asks for it, which it does
        # after it has processed the clusters/listeners that made it due.
        st = self.state(type_url)
        if not st.open_request or self.snapshot is None:
            return
        slot = self.snapshot.slot(type_url)
        by_name = type_url in BY_NAME
        names = st.names if by_name else None
        changed = slot.version != st.sent_version or (by_name and names != st.sent_names)
        digests: tuple[bytes, ...] | None = None
        if by_name and changed and names == st.sent_names:
            # The type changed, but only the subscribed resources matter: a new route or cluster
            # this Envoy has not asked for yet (it will, after the listener or cluster that names
            # it) is no reason to resend the ones it has. (Digests only when the version moved.)
            digests = slot.digests(sorted(st.names))
            changed = digests != st.sent_digests
        if not changed and not (st.due and answer_due):
            return
        if by_name:
            ordered = sorted(st.names)
            resources, count = slot.encoded(ordered)
            st.sent_digests = digests if digests is not None else slot.digests(ordered)
        else:
            resources, count = slot.encoded()
        self._nonce += 1
        st.nonce = str(self._nonce)
        st.sent_version = slot.version
        st.sent_names = names
        st.open_request = False
        st.due = False
        out.prepared.append(Prepared(type_url, slot.version, st.nonce, resources, count))
        out.events.append(Sent(type_url, slot.version, count))
        warmed = _WARMS.get(type_url)
        if warmed is not None:
            self.state(warmed).due = True
