"""The test servers and a bounded client as programs, for test hosts in other network namespaces.

    python -m meshline.testing.apps http --name orders-1 --port 8080 --host 0.0.0.0
    python -m meshline.testing.apps tcp --name db-1 --port 5000
    python -m meshline.testing.apps grpc --name echo-1 --port 9000
    python -m meshline.testing.apps origdst --port 15001 --port 15006
    python -m meshline.testing.apps load --url http://orders.mesh/ --count 200 --interval 0.01 --out r.json
    python -m meshline.testing.apps dns --port 53 --record db.example.test=10.9.9.9
    python -m meshline.testing.apps client resolve orders.mesh    (also: tcp, banner, grpc, ws)

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

from meshline.testing.servers import (
    Behaviour,
    GrpcTestServer,
    HttpTestServer,
    TcpEchoServer,
    grpc_echo,
    grpcs_echo,
)


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


def load_tls(url: str, connect: str, cafile: Path, count: int, interval: float, timeout: float,
             keepalive: bool = False) -> dict[str, Any]:  # fmt: skip
    """HTTPS GETs of ``url`` dialing ``connect`` (the URL's host stays the SNI and Host), verified
    against ``cafile``: a new connection (and handshake) per request, or one kept-alive connection.
    Counts the status codes and the serial numbers of the certificates the server presented."""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    ctx = ssl.create_default_context(cafile=str(cafile))
    codes: Counter[int] = Counter()
    serials: Counter[str] = Counter()
    errors: list[str] = []
    conn: http.client.HTTPSConnection | None = None

    def dial() -> http.client.HTTPSConnection:
        c = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
        sock = socket.create_connection((connect, port), timeout=timeout)
        c.sock = ctx.wrap_socket(sock, server_hostname=host)
        return c

    for i in range(count):
        started = time.monotonic()
        try:
            if conn is None:
                conn = dial()
            conn.request("GET", parts.path or "/")
            resp = conn.getresponse()
            resp.read()
            codes[resp.status] += 1
            cert = conn.sock.getpeercert() if conn.sock is not None else None
            serials[str((cert or {}).get("serialNumber", ""))] += 1
            if not keepalive or resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as err:
            codes[0] += 1
            if len(errors) < 20:
                errors.append(f"request {i}: {type(err).__name__}: {err}")
            if conn is not None:
                conn.close()
            conn = None
        if i % 10 == 9:
            print(f"done {i + 1}", flush=True)
        pause = interval - (time.monotonic() - started)
        if pause > 0:
            time.sleep(pause)
    if conn is not None:
        conn.close()
    return {"codes": {str(k): v for k, v in codes.items()}, "serials": dict(serials), "errors": errors}


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


def serve_dns(port: int, records: list[str]) -> None:
    """A stand-in for a host's resolver: answers the given names (A), NXDOMAIN-free SERVFAIL otherwise."""
    import asyncio

    from meshline.agent.capture.dns import DnsServer
    from meshline.agent.capture.dns_table import DnsTable

    table = DnsTable()
    table.update(json.dumps({"bare": True, "vips": dict(r.split("=", 1) for r in records)}))

    async def run() -> None:
        server = DnsServer(table, port, address="0.0.0.0", upstreams=[])
        await server.start()
        print(f"serving DNS on 0.0.0.0:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(run())


def client(mode: str, args: list[str], timeout: float) -> dict[str, Any]:
    """One call the way an unchanged app makes it; what came back (``error`` when it failed)."""
    started = time.monotonic()
    try:
        if mode == "resolve":
            out: Any = sorted({i[4][0] for i in socket.getaddrinfo(args[0], 80, socket.AF_INET, socket.SOCK_STREAM)})
        elif mode in ("tcp", "banner"):
            with socket.create_connection((args[0], int(args[1])), timeout=timeout) as s:
                f = s.makefile("rwb")
                if mode == "tcp":
                    f.write(args[2].encode() + b"\n")
                    f.flush()
                out = f.readline().decode().strip()
        elif mode == "grpc":
            out = grpc_echo(args[0], b"ping", timeout=timeout).decode()
        elif mode == "grpcs":  # TARGET SERVER_NAME CA_FILE: over TLS, verifying SERVER_NAME against CA_FILE
            out = grpcs_echo(args[0], args[1], Path(args[2]).read_bytes(), timeout=timeout).decode()
        elif mode == "ws":
            out = _websocket(args[0], timeout)
        else:
            raise ValueError(f"unknown client mode {mode}")
    except Exception as err:  # the test asserts on what failed and how
        return {"error": f"{type(err).__name__}: {err}", "seconds": time.monotonic() - started}
    return {"result": out, "seconds": time.monotonic() - started}


def _websocket(url: str, timeout: float) -> str:
    import asyncio

    import aiohttp

    async def run() -> str:
        async with aiohttp.ClientSession() as session, session.ws_connect(url, receive_timeout=timeout) as ws:
            await ws.send_str("ping")
            msg = await asyncio.wait_for(ws.receive(), timeout)
            return str(msg.data)

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meshline.testing.apps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for kind in ("http", "tcp", "grpc"):
        p = sub.add_parser(kind)
        p.add_argument("--name", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", default="127.0.0.1")
        if kind == "http":
            p.add_argument("--fail-ratio", type=float, default=0.0, help="share of requests answered 503")
            p.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
        if kind == "tcp":
            p.add_argument("--banner", action="store_true", help="speak first (server-speaks-first protocols)")
    p = sub.add_parser("dns")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--record", action="append", default=[], help="NAME=IPV4")
    p = sub.add_parser("client")
    p.add_argument("mode", choices=["resolve", "tcp", "banner", "grpc", "grpcs", "ws"])
    p.add_argument("args", nargs="*")
    p.add_argument("--timeout", type=float, default=5.0)
    p = sub.add_parser("origdst")
    p.add_argument("--port", type=int, action="append", required=True)
    p = sub.add_parser("load")
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--connect", default=None, help="https: dial this address (the URL's host stays SNI and Host)")
    p.add_argument("--cafile", type=Path, default=None, help="https: verify the server against this CA")
    p.add_argument("--keepalive", action="store_true", help="https: one connection for every request")
    args = parser.parse_args(argv)
    if args.what == "origdst":
        serve_origdst(args.port)
        return
    if args.what == "load":
        headers = dict(h.split(":", 1) for h in args.header)
        if args.connect:
            result = load_tls(args.url, args.connect, args.cafile, args.count, args.interval, args.timeout, args.keepalive)
        else:
            result = load(args.url, args.count, args.interval, args.timeout, {k.strip(): v.strip() for k, v in headers.items()})
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(args.out)
        return
    if args.what == "dns":
        serve_dns(args.port, args.record)
        return
    if args.what == "client":
        print(json.dumps(client(args.mode, args.args, args.timeout)))
        return
    if args.what == "http":
        server: Any = HttpTestServer(name=args.name, port=args.port, host=args.host,
                                     behaviour=Behaviour(fail_ratio=args.fail_ratio, delay=args.delay))  # fmt: skip
    elif args.what == "tcp":
        server = TcpEchoServer(name=args.name, port=args.port, host=args.host, banner=args.banner)
    else:
        server = GrpcTestServer(name=args.name, port=args.port, host=args.host)
    _serve_until_signalled(server)


if __name__ == "__main__":
    main()
