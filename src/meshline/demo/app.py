"""One small HTTP app playing any role of the demo. It knows nothing about the mesh:
it calls its upstream at the local address the agent gives it (MESHLINE_OUTBOUND_*).

    python -m meshline.demo.app --role orders --port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time

import httpx
from aiohttp import web

UPSTREAM = {"web": "orders", "orders": "inventory"}


def upstream_url(role: str) -> str | None:
    up = UPSTREAM.get(role)
    if up is None:
        return None
    addr = os.environ.get(f"MESHLINE_OUTBOUND_{up.upper()}")
    return f"http://{addr}" if addr else None


def make_app(role: str, version: str, fail_ratio: float = 0.0, delay_ms: float = 0.0) -> web.Application:
    """``fail_ratio``/``delay_ms``: a deliberately bad version (``meshline up --broken-v2``),
    for a rollout to catch (docs/rollouts.md)."""
    url = upstream_url(role)
    rng = random.Random()
    client = httpx.AsyncClient(timeout=5.0)
    stock = {"book": 12, "lamp": 3, "mug": 40}

    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        body: dict[str, object] = {"service": role, "version": version, "path": request.path}
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if fail_ratio and rng.random() < fail_ratio:
            body["error"] = f"{role} {version} is deliberately broken (fails {fail_ratio:.0%} of requests)"
            return web.json_response(body, status=500)
        # The caller's identity, as the sidecar proved it with mTLS (x-forwarded-client-cert).
        xfcc = request.headers.get("x-forwarded-client-cert", "")
        if "URI=" in xfcc:
            body["caller"] = xfcc.split("URI=", 1)[1].split(";", 1)[0].split(",", 1)[0]
        if role == "inventory":
            body["stock"] = stock
        elif url is not None:
            try:
                resp = await client.get(url + request.path_qs, headers={
                    k: v for k, v in request.headers.items() if k.lower().startswith(("x-", "traceparent"))
                    and k.lower() != "x-forwarded-client-cert"})
                body["upstream"] = resp.json() if resp.headers.get("content-type", "").startswith(
                    "application/json") else {"status": resp.status_code, "body": resp.text[:200]}
                body["upstreamStatus"] = resp.status_code
                if resp.status_code >= 500:
                    body["elapsedMs"] = round((time.perf_counter() - started) * 1000, 1)
                    return web.json_response(body, status=502)
            except httpx.HTTPError as err:
                body["error"] = f"cannot reach {UPSTREAM[role]}: {type(err).__name__}"
                return web.json_response(body, status=502)
        body["elapsedMs"] = round((time.perf_counter() - started) * 1000, 1)
        return web.json_response(body)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def close(app: web.Application) -> None:
        await client.aclose()

    app = web.Application()
    app.router.add_get("/healthz", health)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_cleanup.append(close)
    return app


async def serve(role: str, version: str, port: int, host: str, fail_ratio: float = 0.0, delay_ms: float = 0.0) -> None:
    runner = web.AppRunner(make_app(role, version, fail_ratio, delay_ms), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--role", choices=["web", "orders", "inventory"], required=True)
    p.add_argument("--version", default="v1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--fail-ratio", type=float, default=0.0, help="answer 500 to this share of requests")
    p.add_argument("--delay-ms", type=float, default=0.0, help="answer this much later")
    args = p.parse_args()
    asyncio.run(serve(args.role, args.version, args.port, args.host, args.fail_ratio, args.delay_ms))


if __name__ == "__main__":
    main()
