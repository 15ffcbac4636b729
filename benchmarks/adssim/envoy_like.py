"""One simulated dataplane: an ADS stream that behaves like Envoy's (state of the world).

What Envoy does and this copies:

* the first request (CDS, wildcard) carries the node; later ones do not
  (``set_node_on_first_message_only``);
* it ACKs each CDS response (same version and nonce), then subscribes EDS to the clusters'
  ``service_name``\\ s, asking again even when the names are unchanged, as Envoy does for
  the clusters it warms;
* LDS (wildcard) is requested once the first endpoints arrived (clusters warmed);
* it ACKs each LDS response, then subscribes RDS to the listeners' ``route_config_name``\\ s
  (a request only when the names change);
* EDS and RDS responses are ACKed;
* on a broken stream it reconnects with Envoy's jittered exponential backoff (a uniformly
  random wait below 0.5 s, the bound doubling per failed attempt up to 30 s, reset by a
  response) and starts again, sending the versions it has, as Envoy does.

Nothing is NACKed: the control plane's configs are valid, and NACK handling is covered by
tests with real Envoys. Names are read from each resource once: resources are cached by their
serialized bytes, so a push of identical clusters costs the simulator a dict lookup each.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}
HCM_NAME = "envoy.filters.network.http_connection_manager"
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0

_eds_names: dict[bytes, str | None] = {}  # serialized Cluster -> its EDS service name
_rds_names: dict[bytes, tuple[str, ...]] = {}  # serialized Listener -> its RDS names


def eds_name(value: bytes) -> str | None:
    name = _eds_names.get(value, "")
    if name == "":
        c = cluster_pb2.Cluster.FromString(value)
        name = (c.eds_cluster_config.service_name or c.name) if c.type == cluster_pb2.Cluster.EDS else None
        _eds_names[value] = name
    return name


def rds_names(value: bytes) -> tuple[str, ...]:
    found = _rds_names.get(value)
    if found is None:
        lst = listener_pb2.Listener.FromString(value)
        out = []
        for chain in lst.filter_chains:
            for f in chain.filters:
                if f.name == HCM_NAME:
                    hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        out.append(hcm.rds.route_config_name)
        found = _rds_names[value] = tuple(sorted(set(out)))
    return found


@dataclass
class TypeState:
    version: str = ""  # last accepted (what Envoy reports in its requests)
    nonce: str = ""
    names: tuple[str, ...] = ()
    subscribed: bool = False


@dataclass
class Tally:
    """What a dataplane saw since the driver's last mark."""

    pushes: dict[str, int] = field(default_factory=dict)  # short type -> responses
    acked_at: dict[str, float] = field(default_factory=dict)  # short type -> monotonic time of its last ACK

    def last_ack(self, types: Iterable[str] | None = None) -> float:
        wanted = self.acked_at if types is None else [t for t in types if t in self.acked_at]
        return max((self.acked_at[t] for t in wanted), default=0.0)

    def clear(self) -> None:
        self.pushes.clear()
        self.acked_at.clear()


class SimDataplane:
    def __init__(
        self,
        node: str,
        channel: Callable[[], grpc.aio.Channel],
        token: str | None,
        on_change: Callable[[str | None], None],  # called with the pushed type, or None
    ) -> None:
        self.node = node
        self.channel = channel
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.on_change = on_change
        self.types: dict[str, TypeState] = {t: TypeState() for t in TYPES}
        self.tally = Tally()
        self.connected = False
        self.streams = 0  # streams opened (1 + reconnects)
        self.synced_streams = 0  # streams on which all four types were ACKed
        self._acked_on_stream: set[str] = set()
        self.last_error = ""
        self._backoff = BACKOFF_BASE

    def versions(self) -> dict[str, str]:
        return {SHORT[t]: s.version for t, s in self.types.items()}

    def synced(self) -> bool:
        """Connected and every type ACKed on the current stream."""
        return self.connected and len(self._acked_on_stream) == len(TYPES)

    async def run(self, start_delay: float = 0.0) -> None:
        await asyncio.sleep(start_delay)
        while True:
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                self.last_error = f"{err.code().name}: {err.details()}"
            except Exception as err:  # keep simulating; the driver reports errors it sees
                self.last_error = f"{type(err).__name__}: {err}"
            self.connected = False
            self._acked_on_stream.clear()
            self.on_change(None)
            # Envoy's JitteredExponentialBackOffStrategy(500 ms, 30 s): random below the
            # interval, which doubles per failure; a response on a stream resets it.
            await asyncio.sleep(random.uniform(0, self._backoff))
            self._backoff = min(BACKOFF_MAX, self._backoff * 2)

    def _request(self, type_url: str, *, first: bool = False) -> discovery_pb2.DiscoveryRequest:
        st = self.types[type_url]
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=st.version, response_nonce=st.nonce, resource_names=st.names
        )
        if first:
            req.node.id = self.node
            req.node.cluster = self.node.partition(".")[2]
        return req

    async def _stream(self) -> None:
        call = self.channel().stream_stream(
            METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(metadata=self.metadata)
        self.streams += 1
        for st in self.types.values():
            st.nonce = ""  # nonces belong to a stream; versions survive (Envoy reports them)
        # On a reconnect Envoy re-subscribes to everything it had.
        subscribed = [t for t in TYPES if self.types[t].subscribed] or [CLUSTER]
        self.types[CLUSTER].subscribed = True
        for i, type_url in enumerate(subscribed):
            await call.write(self._request(type_url, first=i == 0))
        self.connected = True
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise ConnectionError("stream closed by the control plane")
            await self._handle(call, resp)

    async def _handle(self, call: grpc.aio.StreamStreamCall, resp: discovery_pb2.DiscoveryResponse) -> None:
        type_url = resp.type_url
        st = self.types[type_url]
        self._backoff = BACKOFF_BASE
        tally = self.tally
        short = SHORT[type_url]
        tally.pushes[short] = tally.pushes.get(short, 0) + 1
        st.nonce = resp.nonce
        st.version = resp.version_info
        # Envoy pauses EDS (RDS) while it applies clusters (listeners): the ACK goes first,
        # then the subscription the new config needs.
        await call.write(self._request(type_url))  # ACK
        tally.acked_at[short] = time.monotonic()
        self._acked_on_stream.add(type_url)
        if type_url == CLUSTER:
            eds = self.types[ENDPOINT]
            eds.names = tuple(sorted({n for r in resp.resources if (n := eds_name(r.value)) is not None}))
            eds.subscribed = True
            await call.write(self._request(ENDPOINT))  # warming: asked again even if unchanged
        elif type_url == LISTENER:
            rds = self.types[ROUTE]
            names = tuple(sorted({n for r in resp.resources for n in rds_names(r.value)}))
            if names != rds.names or not rds.subscribed:
                rds.names, rds.subscribed = names, True
                await call.write(self._request(ROUTE))
        elif type_url == ENDPOINT and not self.types[LISTENER].subscribed:
            self.types[LISTENER].subscribed = True  # clusters warmed: now listeners
            await call.write(self._request(LISTENER))
        self.on_change(short)
