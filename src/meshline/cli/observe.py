"""stat / top / edges / tap / explain: what the mesh's traffic is doing, from the control plane's
telemetry intake (sidecars stream their access logs to it; see docs/observability.md)."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

import click
import httpx
from rich.live import Live
from rich.table import Table

from meshline.api.client import ApiClient, connect_args, explained, unreachable_for
from meshline.api.common import error_for
from meshline.cli.output import console, echo, table
from meshline.core.errors import MeshlineError

WINDOW = click.option("-w", "--window", type=click.Choice(["1m", "5m"]), default="1m", show_default=True,
                      help="how far back the rates and percentiles look")
MESH = click.option("-m", "--mesh", default="default", show_default=True)
OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "wide", "json"]), default="table",
                      help="wide: a table whose cells are never cut (also what a pipe gets)")


def _client(ctx: click.Context) -> ApiClient:
    obj = ctx.find_root().obj or {}
    return ApiClient(obj.get("api"), obj.get("token"), context=obj.get("context"))


def _stats(ctx: click.Context, mesh: str, window: str, service: str = "", paths: int = 0) -> dict[str, Any]:
    params: dict[str, str | int] = {"window": window}
    if service:
        params["service"] = service
    if paths:
        params["paths"] = paths
    with _client(ctx) as c:
        data: dict[str, Any] = c.get(f"/api/v1/meshes/{mesh}/stats", params=params)
    return data


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


def _rate(row: dict[str, Any]) -> str:
    rate = row.get("successRate")
    if rate is None:
        return "-"
    pct = rate * 100
    text = f"{pct:.2f}%" if 99 < pct < 100 else f"{pct:.1f}%"
    colour = "green" if pct >= 99 else "yellow" if pct >= 95 else "red"
    return f"[{colour}]{text}[/{colour}]"


def _signals(row: dict[str, Any]) -> list[object]:
    lat = row["latencyMs"]
    return [f"{row['rps']:.2f}", _rate(row), row.get("denied", 0), _ms(lat["p50"]), _ms(lat["p95"]),
            _ms(lat["p99"]), row["requests"]]


# SUCCESS: answered, no failure (5xx, no response, gRPC server error) and not DENIED by the mesh.
SIGNALS = ["RPS", "SUCCESS", "DENIED", "P50", "P95", "P99", "REQUESTS"]


def _no_traffic(data: dict[str, Any]) -> None:
    if data.get("received"):
        echo(f"No matching traffic in the last {data['window']}.")
    else:
        echo(
            f"No traffic seen in mesh {data['mesh']} yet. Send some requests through a sidecar;"
            " access logs are streamed unless the Mesh sets logging.stream: false."
        )


@click.command()
@click.argument("service", required=False, default="")
@MESH
@WINDOW
@OUTPUT
@click.pass_context
def stat(ctx: click.Context, service: str, mesh: str, window: str, output: str) -> None:
    """Golden signals per service (or one SERVICE and its edges): rate, success, latency.

    Counted on the caller's side (its sidecar), once per request; see docs/observability.md.
    """
    data = _stats(ctx, mesh, window, service)
    if output == "json":
        echo(json.dumps(data, indent=2))
        return
    rows: list[list[object]] = [[s["service"], *_signals(s)] for s in data["services"]]
    if service:
        rows += [[f"  {e['source']} -> {e['destination']}", *_signals(e)] for e in data["edges"]]
    if not rows:
        _no_traffic(data)
        return
    table(["SERVICE", *SIGNALS], rows, title=f"mesh {mesh}, last {window}", wide=output == "wide")


@click.command()
@MESH
@WINDOW
@OUTPUT
@click.pass_context
def edges(ctx: click.Context, mesh: str, window: str, output: str) -> None:
    """Who talks to whom, how well, and whether the connections were mTLS."""
    data = _stats(ctx, mesh, window)
    if output == "json":
        echo(json.dumps(data["edges"], indent=2))
        return
    if not data["edges"]:
        _no_traffic(data)
        return
    colour = {"yes": "green", "no": "yellow", "mixed": "red"}
    rows = [
        [e["source"], e["destination"], e["protocol"], *_signals(e),
         f"[{colour.get(e['mtls'], 'dim')}]{e['mtls']}[/{colour.get(e['mtls'], 'dim')}]"]
        for e in data["edges"]
    ]
    table(["SOURCE", "DESTINATION", "PROTOCOL", *SIGNALS, "MTLS"], rows, title=f"mesh {mesh}, last {window}",
          wide=output == "wide")


def _top_table(data: dict[str, Any], mesh: str, window: str) -> Table:
    t = Table(title=f"busiest paths in mesh {mesh}, last {window} (Ctrl-C to stop)", box=None,
              header_style="bold", pad_edge=False)
    for h in ["SERVICE", "METHOD", "PATH", *SIGNALS]:
        t.add_column(h)
    for p in data.get("paths", []):
        if p["requests"]:
            t.add_row(p["service"], p["method"], p["path"], *(str(c) for c in _signals(p)))
    return t


@click.command()
@click.argument("service", required=False, default="")
@MESH
@WINDOW
@click.option("-n", "--limit", default=20, show_default=True, help="rows to show")
@click.option("--interval", default=1.0, show_default=True, help="seconds between refreshes")
@click.option("--iterations", default=0, hidden=True, help="stop after N refreshes (0: until Ctrl-C)")
@click.pass_context
def top(ctx: click.Context, service: str, mesh: str, window: str, limit: int, interval: float,
        iterations: int) -> None:
    """A live view of the busiest request paths (optionally of one SERVICE)."""
    done = 0
    with Live(console=console, auto_refresh=False) as live:
        while True:
            data = _stats(ctx, mesh, window, service, paths=limit)
            live.update(_top_table(data, mesh, window), refresh=True)
            done += 1
            if iterations and done >= iterations:
                return
            time.sleep(interval)


def _stream(ctx: click.Context, path: str, params: dict[str, str | int]) -> Iterator[dict[str, Any]]:
    obj = ctx.find_root().obj or {}
    conn, args = connect_args(obj.get("api"), obj.get("token"), True, obj.get("context"))
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10.0, read=None), **args) as http,
            http.stream("GET", path, params=params) as resp,
        ):
            if resp.status_code >= 400:
                resp.read()
                try:
                    message = resp.json().get("message", resp.text)
                except ValueError:
                    message = resp.text
                err = error_for(resp.status_code, resp.reason_phrase, resp.content) or MeshlineError(str(message))
                raise explained(err, conn)
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)
    except httpx.TransportError as err:
        raise unreachable_for(conn, err) from None


def _clock(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def tap_line(r: dict[str, Any]) -> str:
    """One request as a terminal line (plain text; failures end with their explanation)."""
    status = str(r["status"] or "-") if r["protocol"] == "http" else ("failed" if r["failed"] else "ok")
    if r.get("grpcStatus") not in (None, 0):
        status += f"/grpc-{r['grpcStatus']}"
    dest = r["destination"] + (f"({r['destinationInstance']})" if r.get("destinationInstance") else "")
    what = f"{r['method']} {r['path']}" if r["protocol"] == "http" else "tcp"
    parts = [
        _clock(r["time"]), f"{r['source']} -> {dest}", what, status, _ms(r["durationMs"]),
        r.get("upstreamHost") or "-", f"trace={r['traceId'] or '-'}", f"id={r['requestId'] or '-'}",
    ]
    if r.get("client"):
        parts.append(f"client={r['client']}")
    line = "  ".join(parts)
    if r.get("mirrored"):
        line += "  (mirrored copy: the caller never saw its answer)"
    if r.get("explanation"):
        line += f"  !! {r['explanation']}"
    return line


@click.command()
@click.argument("service")
@MESH
@click.option("--path", default="", help="only paths starting with this prefix")
@click.option("--status", default="", help="only these statuses: 5xx, 4xx, 404, failed (comma-separated)")
@click.option("--replay", default=0, show_default=True, help="first show up to N recent matching requests")
@click.option("--max", "max_count", default=0, help="stop after N requests (0: until Ctrl-C)")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def tap(ctx: click.Context, service: str, mesh: str, path: str, status: str, replay: int, max_count: int,
        output: str) -> None:
    """Watch requests to and from SERVICE live, with the reason for every failure."""
    params: dict[str, str | int] = {"service": service, "path": path, "status": status, "replay": replay}
    seen, first = 0, True
    while True:  # the control plane ends an idle tap (see telemetry/api.py): tap again
        for item in _stream(ctx, f"/api/v1/meshes/{mesh}/tap", params):
            if "end" in item:
                break
            if "tap" in item:
                if first:
                    click.echo(f"tapping {service} in mesh {mesh}" + (f", path {path}*" if path else "")
                               + (f", status {status}" if status else "") + " (Ctrl-C to stop)", err=True)
                first = False
                continue
            click.echo(json.dumps(item) if output == "json" else tap_line(item))
            seen += 1
            if max_count and seen >= max_count:
                return
        else:
            return  # the control plane closed the stream (stopping)
        params["replay"] = 0


@click.command()
@click.argument("request_id")
@MESH
@OUTPUT
@click.pass_context
def explain(ctx: click.Context, request_id: str, mesh: str, output: str) -> None:
    """Why one request (x-request-id, or a trace id) did what it did: both sidecars' view."""
    with _client(ctx) as c:
        data = c.get(f"/api/v1/meshes/{mesh}/requests/{request_id}")
    if output == "json":
        echo(json.dumps(data, indent=2))
        return
    verdict = data["explanation"] or "no failure: the request succeeded"
    console.print(f"[bold]{request_id}[/bold]: {verdict}", soft_wrap=True)
    for r in data["records"]:
        side = "caller's sidecar" if r["direction"] == "outbound" else "callee's sidecar"
        console.print(f"\n[bold]{r['direction']}[/bold] ({side} {r['dataplane']}, {r['section']})")
        rows = [
            ("time", _clock(r["time"])), ("from -> to", f"{r['source']} -> {r['destination']}"),
            ("request", f"{r['method']} {r['authority']}{r['path']}".strip()),
            ("status", r["status"]), ("grpc status", r.get("grpcStatus")),
            ("flags", ",".join(r["flags"]) or "-"), ("details", r["details"] or "-"),
            ("upstream", f"{r['upstreamHost'] or '-'} ({r['upstreamCluster'] or '-'})"),
            ("instance", " ".join(x for x in (r["destinationInstance"], r["destinationVersion"]) if x) or "-"),
            ("transport failure", r["transportFailure"] or None), ("duration", _ms(r["durationMs"])),
            ("attempts", r["attempts"] or None), ("route", r["route"] or "-"),
            ("route timeout", _ms(r["routeTimeoutMs"]) if r.get("routeTimeoutMs") else None),
            ("policies", ", ".join(r["policies"]) or "-"), ("mTLS", r.get("mtls")), ("peer", r.get("peer") or None),
            ("trace", r["traceId"] or "-"), ("explanation", r["explanation"] or None),
        ]
        table(["", ""], [[k, v] for k, v in rows if v is not None])
