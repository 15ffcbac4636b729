"""A tiny HTTP/1.1 keep-alive server that freezes once, to check a load generator's tail.

It answers every request with a 1 KB body. ``--stall-after`` seconds after the first
request (``GET /ready``, a readiness probe, does not count) it blocks its whole event loop for ``--stall-ms`` (like a stop-the-world GC pause),
then carries on. An open-loop generator at 1,000 req/s must report a max latency of at
least the stall and about ``rate * stall`` delayed requests; a closed-loop one sees only
the ~N requests in flight at that moment.

    python -m benchmarks.loadgen.stall_server --port 18099 --stall-after 1.5 --stall-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

BODY = b"x" * 1024
PROBE = b"GET /ready "
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY


class StallServer:
    """Serves ``RESPONSE``; blocks the loop once, ``stall_after`` s after the first request."""

    def __init__(self, stall_after: float, stall_ms: float) -> None:
        self.stall_after = stall_after
        self.stall_ms = stall_ms
        self.first_request: float | None = None
        self.stalled = False

    def _maybe_stall(self, head: bytes) -> None:
        if head.startswith(PROBE):
            return  # the clock starts with the load, however long after the probe it comes
        now = time.monotonic()
        if self.first_request is None:
            self.first_request = now
        if not self.stalled and now - self.first_request >= self.stall_after:
            self.stalled = True
            time.sleep(self.stall_ms / 1000.0)  # deliberately blocks every connection

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self._maybe_stall(head)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(port: int, stall_after: float, stall_ms: float) -> None:
    server = StallServer(stall_after, stall_ms)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", port)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stall-after", type=float, default=1.5)
    parser.add_argument("--stall-ms", type=float, default=200.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.stall_after, args.stall_ms))


if __name__ == "__main__":
    main()
