"""permissions suggest / report, record, replay: learning from the mesh's traffic
(docs/learn-and-replay.md). Each command calls the control plane's API (or, for replay, the
target), nothing more."""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from meshline.cli.observe import MESH, _client, _stream
from meshline.cli.output import echo, table
from meshline.core.errors import MeshlineError

SINCE = click.option("--since", default="1h", show_default=True, help="how far back (at most 1h)")


@click.group()
def permissions() -> None:
    """Least-privilege TrafficPermissions from observed traffic, and what they would refuse."""


@permissions.command()
@MESH
@SINCE
@click.option("--l7", is_flag=True, help="also methods and path prefixes per edge")
@click.option("--dry-run", "dry_run", is_flag=True, help="every permission in mode dry-run (refuses nothing)")
@click.option("--include-denied", is_flag=True, help="also allow edges whose requests were all refused")
@click.option("--collapse-at", default=3, show_default=True, help="paths sharing a parent that become its prefix")
@click.option("--only", multiple=True, metavar="CALLER->SERVICE",
              help="only these edges (and no deny of the rest): a missing rule for a set already applied")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml")
@click.pass_context
def suggest(ctx: click.Context, mesh: str, since: str, l7: bool, dry_run: bool, include_denied: bool,
            collapse_at: int, only: tuple[str, ...], output: str) -> None:
    """TrafficPermissions that allow exactly the service-to-service calls observed, as YAML to review."""
    params: dict[str, str | int] = {"since": since, "l7": str(l7).lower(), "collapseAt": collapse_at,
                                    "mode": "dry-run" if dry_run else "enforce",
                                    "includeDenied": str(include_denied).lower(), "only": ",".join(only)}
    with _client(ctx) as c:
        data: dict[str, Any] = c.get(f"/api/v1/meshes/{mesh}/permissions/suggest", params=params)
    if not data["documents"]:
        for line in data["skipped"]:
            click.echo(f"skipped: {line}", err=True)
        raise MeshlineError(f"no service-to-service traffic to allow was observed in mesh {mesh} in the last {since}"
                            + (f" on {', '.join(only)}" if only else "")
                            + "; send traffic through the sidecars (or widen --since, up to 1h) and suggest again")
    click.echo(json.dumps(data["documents"], indent=2) if output == "json" else data["yaml"], nl=False)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


@permissions.command()
@MESH
@SINCE
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def report(ctx: click.Context, mesh: str, since: str, output: str) -> None:
    """Requests refused, and those dry-run permissions would refuse, by policy, caller and path."""
    with _client(ctx) as c:
        data: dict[str, Any] = c.get(f"/api/v1/meshes/{mesh}/permissions/report", params={"since": since})
    rows = data["denials"]
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        echo(f"nothing refused or would-be refused in mesh {mesh} in the last {since}")
        return
    from meshline.learn.suggest import SeenPath, collapse

    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["policy"], r["source"], r["destination"]), []).append(r)
    out = []
    for (mode, policy, src, dst), items in groups.items():
        rules = collapse([SeenPath(i["method"], i["path"], False, i["requests"], i["lastSeen"]) for i in items])
        paths = ", ".join(f"{'/'.join(sorted(x.methods))} {x.path}{'*' if x.prefix else ''} x{x.requests}"
                          for x in sorted(rules, key=lambda x: -x.requests)[:5])
        out.append([mode, policy, src, dst, sum(i["requests"] for i in items), paths,
                    _when(max(i["lastSeen"] for i in items))])
    table(["MODE", "DECIDED BY", "CALLER", "SERVICE", "REQUESTS", "PATHS", "LAST SEEN"], out)
    echo("(dry-run: allowed, but would be refused if enforced; enforced: refused)")
    missing = sorted({(r["source"], r["destination"]) for r in rows
                      if r["policy"] == "mesh_default" or r["policy"].endswith("deny-unobserved")})
    for src, dst in missing:
        echo(f"{src} -> {dst}: refused (or would be) where no permission allows it; to allow what it sent: meshline permissions suggest"
             f" --mesh {mesh} --since {since} --l7 --include-denied --only '{src}->{dst}' | meshline apply -f -")


@click.command()
@click.argument("service")
@MESH
@click.option("--version", "version", default="", help="only this version's instances")
@click.option("--duration", default="60s", show_default=True, help="how long to record (at most 1h)")
@click.option("--sample", default="100%", show_default=True, help="share of requests to record, e.g. 10%")
@click.option("--max-body", default=16384, show_default=True, help="bytes kept of each body")
@click.option("--max", "max_count", default=0, help="stop after N requests (0: at the end of --duration)")
@click.option("--redact-header", multiple=True, help="another header to redact (authorization, cookies always are)")
@click.option("--format", "fmt", type=click.Choice(["har", "jsonl"]), default="har", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.pass_context
def record(ctx: click.Context, service: str, mesh: str, version: str, duration: str, sample: str, max_body: int,
           max_count: int, redact_header: tuple[str, ...], fmt: str, out: Path) -> None:
    """Record SERVICE's requests and answers at its sidecars (headers, bodies) into a HAR file."""
    from meshline.learn.har import archive, entry

    params: dict[str, str | int] = {"service": service, "version": version, "duration": duration,
                                    "sample": sample.rstrip("%"), "maxBody": max_body, "max": max_count,
                                    "redact": ",".join(redact_header)}
    records: list[dict[str, Any]] = []
    head: dict[str, Any] = {}
    for item in _stream(ctx, f"/api/v1/meshes/{mesh}/record", params):
        if "recording" in item:
            head = item["recording"]
            click.echo(f"recording {service}{'@' + version if version else ''} in mesh {mesh} for {duration}"
                       f" ({head['samplePercent']:g}% of requests, bodies up to {head['maxBodyBytes']} bytes;"
                       f" redacting {', '.join(head['redacted'])})", err=True)
            continue
        if "end" in item:
            if item.get("dropped"):
                click.echo(f"warning: {item['end']}", err=True)
            break
        records.append(item)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # bodies may be private
    with os.fdopen(fd, "w") as f:
        if fmt == "jsonl":
            for r in records:
                f.write(json.dumps(r) + "\n")
        else:
            json.dump(archive((entry(r) for r in records), comment=f"meshline record {service} ({head.get('name')})"),
                      f, indent=1)
    click.echo(f"{len(records)} request(s) recorded to {out}", err=True)


def _target(ctx: click.Context, mesh: str, to: str, through_mesh: bool) -> str:
    """The base URL of SERVICE[,version=v]: through this process's mesh outbound, else its app."""
    service, _, rest = to.partition(",")
    tags = dict(p.split("=", 1) for p in rest.split(",") if "=" in p)
    if through_mesh:
        env = f"MESHLINE_OUTBOUND_{service.upper().replace('-', '_')}"
        addr = os.environ.get(env)
        if not addr:
            raise MeshlineError(
                f"--through-mesh needs an outbound to {service}: run the replay inside a workload of the mesh,"
                f" e.g. meshline run --service meshline-replay --upstream {service}=15999 -- meshline replay ..."
                f" ({env} is what `meshline run` sets)")
        if tags:
            click.echo(f"note: through the mesh, the route decides which version of {service} answers;"
                       f" {rest} is not applied", err=True)
        return f"http://{addr}"
    with _client(ctx) as c:
        dps = c.get(f"/api/v1/meshes/{mesh}/dataplanes")
    items = dps.get("items", dps) if isinstance(dps, dict) else dps
    for dp in items:
        for inbound in dp["spec"].get("inbound", []):
            t = inbound.get("tags", {})
            if t.get("service") == service and all(t.get(k) == v for k, v in tags.items()):
                port = inbound.get("servicePort") or inbound["port"]
                return f"http://127.0.0.1:{port}"
    raise MeshlineError(f"no dataplane of mesh {mesh} serves {to}; `meshline get dataplanes` lists them")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "to", default="", help="SERVICE[,version=v2]: its app (or, --through-mesh, its service)")
@click.option("--url", default="", help="send to this base URL instead of --to")
@MESH
@click.option("--rate", type=click.Choice(["x1", "max"]), default="max", show_default=True,
              help="x1: the recorded pacing; max: each request as soon as the previous answered")
@click.option("--through-mesh", is_flag=True, help="through this workload's sidecar (inside `meshline run`)")
@click.option("--compare-header", multiple=True, default=("content-type",), show_default=True)
@click.option("--ignore-field", multiple=True, help="JSON fields to ignore besides timestamps and ids")
@click.option("--body", type=click.Choice(["json", "exact", "none"]), default="json", show_default=True)
@click.option("-H", "--header", "extra", multiple=True, help="'name: value' to add (e.g. a token for redacted ones)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--serve", default="", metavar="HOST:PORT",
              help="serve as a rollout webhook: each POST replays FILE to the rollout's candidate")
@click.pass_context
def replay(ctx: click.Context, file: Path, to: str, url: str, mesh: str, rate: str, through_mesh: bool,
           compare_header: tuple[str, ...], ignore_field: tuple[str, ...], body: str, extra: tuple[str, ...],
           output: str, serve: str) -> None:
    """Send FILE's recorded requests to a target and report, per endpoint, what differs. Exits 1 on a difference."""
    from meshline.learn.replay import DEFAULT_IGNORED, EndpointReport, compare, from_har
    from meshline.learn.replay import replay as run

    recorded = from_har(json.loads(file.read_text()))
    headers = dict((k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in extra))

    def against(base: str) -> list[EndpointReport]:
        got = run(recorded, base, rate=rate, extra=headers)
        return compare(recorded, got, headers=compare_header, ignored=DEFAULT_IGNORED | set(ignore_field), body=body)

    if serve:
        _serve_webhook(serve, lambda m, target: against(_target(ctx, m, target, through_mesh)), mesh)
        return
    if not (to or url):
        raise click.UsageError("give --to SERVICE[,version=v] or --url")
    base = url or _target(ctx, mesh, to, through_mesh)
    reports = against(base)
    if output == "json":
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        rows = []
        for r in reports:
            j = r.to_json()
            lat = j["latencyMs"]
            what = "; ".join([*(f"status {k} x{v}" for k, v in r.status.items()),
                              *(f"header {k} x{v}" for k, v in r.headers.items()),
                              *([f"body x{r.bodies}: {r.body_example}"] if r.bodies else []),
                              *([f"errors x{r.errors}: {r.body_example}"] if r.errors else [])]) or "same"
            rows.append([r.endpoint, r.requests, what,
                         f"{_ms(lat['recorded']['p50'])} / {_ms(lat['replayed']['p50'])}",
                         f"{_ms(lat['recorded']['p95'])} / {_ms(lat['replayed']['p95'])}",
                         f"{_ms(lat['recorded']['p99'])} / {_ms(lat['replayed']['p99'])}"])
        table(["ENDPOINT", "REQUESTS", "DIFFERENCES", "P50 MS REC/REPLAY", "P95", "P99"], rows)
        differing = [r.endpoint for r in reports if r.differs]
        echo(f"{len(recorded)} request(s) replayed to {base}: "
             + (f"{len(differing)} endpoint(s) differ: {', '.join(differing)}" if differing else "no difference"))
    if any(r.differs for r in reports):
        sys.exit(1)


def _serve_webhook(address: str, replay_to: Any, default_mesh: str) -> None:
    """A rollout webhook (docs/rollouts.md): the rollout POSTs {mesh, service, candidate, ...};
    the answer is 200 when the candidate answers the recording as recorded, else 422 with the
    differing endpoints (the rollout pauses and shows it), 400 for a body it cannot use."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    host, _, port = address.rpartition(":")

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                size = min(int(self.headers.get("content-length", "0")), 65536)
                data = json.loads(self.rfile.read(size) or b"{}")
                target = f"{data['service']},version={data['candidate']}"
                reports = replay_to(str(data.get("mesh") or default_mesh), target)
            except (ValueError, KeyError, MeshlineError) as err:
                self._answer(400, {"error": f"{type(err).__name__}: {err}"})
                return
            differing = [r.endpoint for r in reports if r.differs]
            self._answer(422 if differing else 200, {"target": target, "differing": differing,
                                                     "endpoints": [r.to_json() for r in reports]})
            click.echo(f"replayed to {target}: " + (", ".join(differing) + " differ" if differing else "no difference"),
                       err=True)

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer((host or "127.0.0.1", int(port)), Hook)
    click.echo(f"serving the replay webhook on http://{host or '127.0.0.1'}:{port}/ (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
