"""The agent's xDS proxy over real sockets: Envoy's calls reach the control plane with the
token added (Envoy holds none), statuses come back as the control plane sent them, and either
side ending ends the other."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshline.agent.config import AgentConfig
from meshline.agent.xds_proxy import XdsProxy

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
RLS = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


class FakeControlPlane:
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.ended = asyncio.Event()
        self.server = grpc.aio.server()
        ads = grpc.stream_stream_rpc_method_handler(self.ads)
        rls = grpc.unary_unary_rpc_method_handler(self.rls)
        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("envoy.service.discovery.v3.AggregatedDiscoveryService",
                                                 {"StreamAggregatedResources": ads}),
            grpc.method_handlers_generic_handler("envoy.service.ratelimit.v3.RateLimitService",
                                                 {"ShouldRateLimit": rls}),
        ))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _seen(self, context: grpc.aio.ServicerContext) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})

    async def ads(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._seen(context)
        try:
            async for message in requests:
                if message == b"deny":
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "token is for service 'payments'")
                yield b"config for " + message
        finally:
            self.ended.set()

    async def rls(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._seen(context)
        return b"ok:" + request


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[FakeControlPlane, AgentConfig, grpc.aio.Channel]]:
    cp = FakeControlPlane()
    await cp.server.start()
    cfg = AgentConfig(mesh="default", name="orders-1", service="orders", address="127.0.0.1", app_port=8080,
                      inbound_port=18080, work_dir=tmp_path / "work", api_url="http://127.0.0.1:1",
                      xds_host="127.0.0.1", xds_port=cp.port, token="s3cret")
    proxy = XdsProxy()
    await proxy.start(cfg)
    envoy = grpc.aio.insecure_channel(f"unix:{cfg.xds_socket}")
    try:
        yield cp, cfg, envoy
    finally:
        await envoy.close()
        await proxy.stop()
        await cp.server.stop(0)


async def test_envoys_calls_reach_the_control_plane_with_the_token(
    world: tuple[FakeControlPlane, AgentConfig, grpc.aio.Channel],
) -> None:
    cp, cfg, envoy = world
    assert stat.S_IMODE(cfg.xds_socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.xds_socket.parent.stat().st_mode) == 0o700
    call = envoy.stream_stream(ADS)()
    await call.write(b"clusters")
    assert await call.read() == b"config for clusters"
    await call.write(b"listeners")
    assert await call.read() == b"config for listeners"
    assert await envoy.unary_unary(RLS)(b"descriptor") == b"ok:descriptor"  # a unary call, forwarded as is
    assert [m.get("authorization") for m in cp.metadata] == ["Bearer s3cret", "Bearer s3cret"]
    # Envoy goes away: its upstream call ends too
    call.cancel()
    await asyncio.wait_for(cp.ended.wait(), 5)


async def test_the_control_planes_refusal_reaches_envoy_as_is(
    world: tuple[FakeControlPlane, AgentConfig, grpc.aio.Channel],
) -> None:
    _, _, envoy = world
    call = envoy.stream_stream(ADS)()
    await call.write(b"deny")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "token is for service 'payments'"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:  # only what Envoy needs is forwarded
        await envoy.unary_unary("/meshline.Admin/Anything")(b"x")
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_control_plane_that_is_down_is_unavailable_to_envoy(tmp_path: Path) -> None:
    cfg = AgentConfig(mesh="default", name="orders-1", service="orders", address="127.0.0.1", app_port=8080,
                      inbound_port=18080, work_dir=tmp_path / "work", api_url="http://127.0.0.1:1",
                      xds_host="127.0.0.1", xds_port=1, token="s3cret")
    proxy = XdsProxy()
    await proxy.start(cfg)
    try:
        async with grpc.aio.insecure_channel(f"unix:{cfg.xds_socket}") as envoy:
            call = envoy.stream_stream(ADS)()
            await call.write(b"clusters")
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await call.read()
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await proxy.stop()
