"""The test servers and a bounded client as programs, for test hosts in other network namespaces.

    python -m meshline.testing.apps http --name orders-1 --port 8080 --host 0.0.0.0
    python -m meshline.testing.apps tcp --name db-1 --port 5000
    python -m meshline.testing.apps grpc --name echo-1 --port 9000
    python -m meshline.testing.apps origdst --port 15001 --port 15006
    python -m meshline.testing.apps load --url http://orders.mesh/ --count 200 --interval 0.01 --out r.json

A server runs until SIGTERM/SIGINT. ``origdst`` stands in for a capturing proxy: it answers each
connection with one JSON line naming the port it arrived on, the original destination the
kernel kept for it (SO_ORIGINAL_DST) and the peer. ``load`` sends at most ``--count`` requests, paced, and
writes one JSON object: ``{"sent", "codes": {code: n}, "instances": {name: n}, "errors": [...]}``
(status 0: no response), so a test sees where every request landed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from meshline.testing.servers import GrpcTestServer, HttpTestServer, TcpEchoServer


def _serve_until_signalled(server: Any) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"serving {type(server).__name__} {server.name} on {server.host}:{server.port}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()


SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def original_destination(sock: socket.socket) -> str:
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return ""
    port = struct.unpack("!H", raw[2:4])[0]
    return f"{socket.inet_ntoa(raw[4:8])}:{port}"


def serve_origdst(ports: list[int]) -> None:
    listeners = []
    for port in ports:
        ls = socket.create_server(("0.0.0.0", port), reuse_port=False)
        listeners.append((port, ls))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def accept(port: int, ls: socket.socket) -> None:
        ls.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, peer = ls.accept()
            except TimeoutError:
                continue
            with conn:
                line = {"port": port, "original": original_destination(conn), "peer": peer[0]}
                conn.sendall(json.dumps(line).encode() + b"\n")
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(1.0)  # read what the client sent: closing on unread data resets
                with contextlib.suppress(OSError):
                    while conn.recv(65536):
                        pass

    threads = [threading.Thread(target=accept, args=item, daemon=True) for item in listeners]
    for t in threads:
        t.start()
    print(f"serving origdst on {ports}", flush=True)
    stop.wait()


def load(url: str, count: int, interval: float, timeout: float, headers: dict[str, str]) -> dict[str, Any]:
    codes: Counter[int] = Counter()
    instances: Counter[str] = Counter()
    errors: list[str] = []
    for i in range(count):
        started = time.monotonic()
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                body = resp.read()
                code = resp.status
        except urllib.error.HTTPError as err:
            body, code = err.read(), err.code
        except (OSError, ValueError) as err:
            body, code = b"", 0
            if len(errors) < 20:
                errors.append(f"request {i}: {err}")
        codes[code] += 1
        try:
            instances[str(json.loads(body).get("instance", ""))] += 1
        except (ValueError, AttributeError):
            instances[""] += 1
        pause = interval - (time.monotonic() - started)
        if pause > 0:
            time.sleep(pause)
    return {"sent": count, "codes": {str(k): v for k, v in codes.items()}, "instances": dict(instances),
            "errors": errors}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meshline.testing.apps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for kind in ("http", "tcp", "grpc"):
        p = sub.add_parser(kind)
        p.add_argument("--name", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", default="127.0.0.1")
    p = sub.add_parser("origdst")
    p.add_argument("--port", type=int, action="append", required=True)
    p = sub.add_parser("load")
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.what == "origdst":
        serve_origdst(args.port)
        return
    if args.what == "load":
        headers = dict(h.split(":", 1) for h in args.header)
        result = load(args.url, args.count, args.interval, args.timeout, {k.strip(): v.strip() for k, v in headers.items()})
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(args.out)
        return
    servers = {"http": HttpTestServer, "tcp": TcpEchoServer, "grpc": GrpcTestServer}
    _serve_until_signalled(servers[args.what](name=args.name, port=args.port, host=args.host))


if __name__ == "__main__":
    main()
