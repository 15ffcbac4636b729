"""How accurate would an open-loop load generator written in Python asyncio be?

This is the measurement behind the decision to write the generator in C (see
benchmarks/README.md). It runs the same schedule as ``openloop.c`` -- request i due at
t0 + i/rate, round-robin over N keep-alive connections, latency from the intended time --
with asyncio streams, and reports the generator's own send lag next to the latency.

    python -m benchmarks.loadgen.asyncio_probe http://127.0.0.1:8080/1k --rate 1000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

from benchmarks.stats import distribution


async def _one_connection(
    host: str,
    port: int,
    request: bytes,
    due_times: list[float],
    latencies: list[float],
    lags: list[float],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for due in due_times:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            lags.append(sent - due)
            writer.write(request)
            header = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in header.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - due)
    finally:
        writer.close()
        await writer.wait_closed()


async def probe(url: str, rate: float, seconds: float, connections: int) -> dict[str, object]:
    """Run the open-loop schedule; return latency and send-lag distributions in ms."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    total = int(rate * seconds)
    t0 = time.perf_counter() + 0.2
    latencies: list[float] = []
    lags: list[float] = []
    tasks = [
        _one_connection(
            host,
            port,
            request,
            [t0 + i / rate for i in range(c, total, connections)],
            latencies,
            lags,
        )
        for c in range(connections)
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 30)
    return {
        "rate": rate,
        "requests": len(latencies),
        "latency_ms": distribution([x * 1e3 for x in latencies]),
        "send_lag_ms": distribution([x * 1e3 for x in lags]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = asyncio.run(probe(args.url, args.rate, min(args.seconds, 60.0), args.connections))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
