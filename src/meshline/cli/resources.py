"""apply / get / delete / inspect: resource commands, speaking only to the REST API."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from meshline.api.client import ApiClient
from meshline.cli.output import console, echo, err_console, table
from meshline.cli.wait import WaitResult, wait_for_acks
from meshline.cli.zones import ZONE_NAMES, get_zones
from meshline.core import safe_yaml
from meshline.core.errors import FieldProblem, MeshlineError, NotFound, ValidationError
from meshline.core.schema import did_you_mean


def client_from(ctx: click.Context) -> ApiClient:
    obj = ctx.find_root().obj or {}
    return ApiClient(obj.get("api"), obj.get("token"), context=obj.get("context"))


def load_documents(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else _read(path)
    try:
        docs = [d for d in safe_yaml.load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValidationError(
            [FieldProblem("", f"{path} is not valid YAML{where}: {getattr(err, 'problem', err)}")]
        ) from None
    out: list[Any] = []
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            out.extend(d["items"])
        else:
            out.append(d)
    if not out:
        raise ValidationError([FieldProblem("", f"{path} holds no resources")])
    return out


def _read(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise ValidationError([FieldProblem("", f"file {path} does not exist")])
    if p.is_dir():
        return "\n---\n".join(f.read_text() for f in sorted(p.glob("*.y*ml")) + sorted(p.glob("*.json")))
    return p.read_text()


@click.command()
@click.option(
    "-f", "--file", "files", multiple=True, required=True, help="YAML/JSON file, directory, or - for stdin"
)
@click.option("--wait", "wait", is_flag=True,
              help="return once every dataplane the change affects has ACKed it (or say which did not)")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="seconds --wait waits")
@click.pass_context
def apply(ctx: click.Context, files: tuple[str, ...], wait: bool, timeout: float) -> None:
    """Create or update resources. All documents are validated first; nothing is written if any is invalid."""
    docs: list[Any] = []
    for f in files:
        docs.extend(load_documents(f))
    with client_from(ctx) as c:
        meshes = sorted({str(d.get("name") if d.get("kind") == "Mesh" else d.get("mesh") or "default")
                         for d in docs if isinstance(d, dict)})  # fmt: skip
        started = time.monotonic()
        before = {m: _sync(c, m) for m in meshes} if wait else {}
        result = c.apply(docs)
        for item in result["items"]:
            echo(f"{item['resource']} {item['result']}")
            for warning in item.get("warnings", []):
                err_console.print(f"[yellow]warning:[/yellow] {item['resource']}: {warning}", soft_wrap=True)
        if wait:
            revision = max((int(i.get("version", 0)) for i in result["items"]), default=0)
            waited = wait_for_acks(lambda m: _sync(c, m), before, revision, timeout, started=started)
            # at a global control plane: zones that are not connected get the change later
            unreachable = {z: why for m in meshes for z, why in (_sync(c, m).get("unreachable") or {}).items()}
            _report_wait(waited, timeout, unreachable)


def _sync(c: ApiClient, mesh: str) -> dict[str, Any]:
    try:
        return dict(c.get(f"/api/v1/meshes/{mesh}/sync"))
    except NotFound:  # a mesh this apply creates
        return {"revision": 0, "settledRevision": 1 << 62, "dataplanes": []}


def _report_wait(w: WaitResult, timeout: float, unreachable: dict[str, str] | None = None) -> None:
    if not w.settled:
        raise MeshlineError(f"the control plane had not rendered the change after {timeout:g}s; see its log")
    gone = ""
    if unreachable:  # a global control plane's zones that are not connected
        gone = "; ".join(sorted(unreachable.values())) + ": it gets the change once it reconnects (`meshline get zones`)"
        if not w.not_acked:
            raise MeshlineError(gone)
    if not w.dataplanes:
        echo(f"no dataplane's configuration changed ({w.seconds:.1f}s)")
        return
    if not w.not_acked:
        n = len(w.dataplanes)
        echo(f"{n} dataplane{'s' if n != 1 else ''} ACKed the change in {w.seconds:.1f}s")
        return
    why = "; ".join(f"{name}: {reason}" for name, reason in sorted(w.not_acked.items()))
    raise MeshlineError(
        f"{len(w.not_acked)} of {len(w.dataplanes)} affected dataplanes did not ACK within {timeout:g}s: {why}"
        " (`meshline inspect dataplane NAME` shows more)" + (f"; {gone}" if gone else "")
    )


def _kinds(c: ApiClient) -> list[dict[str, Any]]:
    return list(c.get("/api/v1/kinds")["items"])


def _find_kind(c: ApiClient, name: str) -> dict[str, Any]:
    for k in _kinds(c):
        if name.lower() in (k["kind"].lower(), k["plural"], *[a.lower() for a in k["aliases"]]):
            return k
    plurals = sorted(k["plural"] for k in _kinds(c))
    guess = did_you_mean(name, plurals + [k["kind"] for k in _kinds(c)])
    hint = f"did you mean {guess}? " if guess else ""
    raise ValidationError([FieldProblem("KIND", f"unknown kind '{name}'; {hint}known: {', '.join(plurals)}")])


def _age(ts: float) -> str:
    if not ts:
        return "-"
    s = int(time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _print_items(kind: dict[str, Any], items: list[dict[str, Any]], output: str, one: bool = False) -> None:
    """``one`` (a NAME was given): JSON and YAML print that object; else a list of them."""
    if output in ("yaml", "json"):
        clean = [{k: v for k, v in i.items() if k not in ("columns",)} for i in items]
        data: Any = clean[0] if one and len(clean) == 1 else clean
        if output == "json":
            echo(json.dumps(data, indent=2))
        elif isinstance(data, dict):
            echo(yaml.safe_dump(data, sort_keys=False).rstrip())
        else:  # one YAML document per resource: `-o yaml | meshline apply -f -` works
            echo(yaml.safe_dump_all(clean, sort_keys=False).rstrip())
        return
    cols = list(kind["columns"])
    headers = ["NAME"] + (["MESH"] if kind["meshScoped"] else []) + cols
    if kind["kind"] == "Dataplane":
        headers += ["STATUS", "CONFIG"]
    headers += ["AGE"]
    rows = []
    for i in items:
        row: list[object] = [i["name"]] + ([i.get("mesh", "")] if kind["meshScoped"] else [])
        row += [i.get("columns", {}).get(c, "") for c in cols]
        if kind["kind"] == "Dataplane":
            st = i.get("status", {})
            state = st.get("state", "offline")
            colour = {"in-sync": "green", "pushing": "yellow", "offline": "dim"}.get(state, "red")
            row.append(f"[{colour}]{state}[/{colour}]")
            nack = st.get("lastNack")
            row.append(
                f"rejected: {nack['message'][:60]}"
                if nack and state == "rejected"
                else st.get("renderError", "")[:60] or "ok"
            )
        row.append(_age(i.get("createdAt", 0)))
        rows.append(row)
    if not rows:
        echo(f"No {kind['plural']} found.")
        return
    table(headers, rows, wide=output == "wide")


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-m", "--mesh", default="default", show_default=True)
@click.option("-o", "--output", type=click.Choice(["table", "wide", "yaml", "json"]), default="table",
              help="wide: a table whose cells are never cut (also what a pipe gets)")
@click.pass_context
def get(ctx: click.Context, kind: str, name: str | None, mesh: str, output: str) -> None:
    """List resources of a KIND (or show one by NAME); `get zones`: the zones' sync with global."""
    with client_from(ctx) as c:
        if kind.lower() in ZONE_NAMES:
            get_zones(c, output)
            return
        k = _find_kind(c, kind)
        if k["meshScoped"]:
            base = f"/api/v1/meshes/{mesh}/{k['plural']}"
            items = [c.get(f"{base}/{name}")] if name else c.get(base)["items"]
        else:
            items = [c.get(f"/api/v1/meshes/{name}")] if name else c.get("/api/v1/meshes")["items"]
    if name and output in ("table", "wide"):
        output = "yaml"
    _print_items(k, items, output, one=name is not None)


@click.command()
@click.argument("kind")
@click.argument("name")
@click.option("-m", "--mesh", default="default", show_default=True)
@click.pass_context
def delete(ctx: click.Context, kind: str, name: str, mesh: str) -> None:
    """Delete one resource; `delete zone NAME` at global forgets a zone that is gone for good."""
    with client_from(ctx) as c:
        if kind.lower() in ZONE_NAMES:
            done = c.request("DELETE", f"/api/v1/zones/{name}")
            echo(f"zone {name} forgotten ({done.get('services', 0)} services no longer routed to it)")
            return
        k = _find_kind(c, kind)
        path = f"/api/v1/meshes/{mesh}/{k['plural']}/{name}" if k["meshScoped"] else f"/api/v1/meshes/{name}"
        c.request("DELETE", path)
    echo(f"{k['kind']} {name} deleted")


@click.command()
@click.argument("what", type=click.Choice(["dataplane", "dp"]))
@click.argument("name")
@click.option("-m", "--mesh", default="default", show_default=True)
@click.option("--config", "show_config", is_flag=True, help="also print the Envoy config it runs (YAML)")
@click.pass_context
def inspect(ctx: click.Context, what: str, name: str, mesh: str, show_config: bool) -> None:
    """A dataplane's status, the policies that apply to it and why, and whether its last push was accepted."""
    with client_from(ctx) as c:
        data = c.get(
            f"/api/v1/meshes/{mesh}/dataplanes/{name}/inspect", params={"config": "1" if show_config else "0"}
        )
    dp = data["dataplane"]
    st = dp.get("status", {})
    where = f"  on replica {st['replica']}" if st.get("replica") else ""  # the one holding its ADS stream
    console.print(f"[bold]Dataplane[/bold] {mesh}/{name}  state: [bold]{st.get('state')}[/bold]{where}")
    spec = dp["spec"]
    for i in spec["inbound"]:
        console.print(
            f"  inbound  {spec['address']}:{i['port']} -> {i.get('serviceAddress', '127.0.0.1')}:"
            f"{i.get('servicePort', i['port'])}  {i['tags']}"
        )
    for o in spec.get("outbound", []):
        console.print(f"  outbound {o.get('address', '127.0.0.1')}:{o['port']} -> {o['service']}")
    for service, vip in data.get("vips", {}).items():
        console.print(f"  vip      {service}.mesh -> {vip} (ports 80 and the service's own)")
    if spec.get("transparent"):
        t = spec["transparent"]
        console.print(f"  transparent: outbound capture :{t.get('outboundPort', 15001)},"
                      f" inbound capture :{t.get('inboundPort', 15006)}")
    if data.get("renderError"):
        console.print(f"[red]render error:[/red] {data['renderError']}")
    for warning in data.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    nack = st.get("lastNack")
    if nack:
        console.print(f"[red]last rejected push[/red] (version {nack['version']}): {nack['message']}")
    types = st.get("types", {})
    if types:
        table(
            ["TYPE", "CURRENT", "SENT", "ACKED", "PUSHES"],
            [
                [
                    t,
                    data["versions"].get(t, ""),
                    v["sent"],
                    v["acked"] + (" ✓" if v["acked"] == data["versions"].get(t) else ""),
                    v["pushes"],
                ]
                for t, v in types.items()
            ],
            title="xDS",
        )
    pols = data.get("policies", [])
    if pols:
        table(
            ["KIND", "NAME", "APPLIES TO", "WHY"],
            [[p["kind"], p["name"], p["target"], p["reason"]] for p in pols],
            title="Policies",
        )
    else:
        echo("No policies apply (mesh defaults only).")
    if show_config:
        echo(yaml.safe_dump(data["config"], sort_keys=False))
