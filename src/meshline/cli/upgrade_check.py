"""`meshline upgrade-check [--to VERSION]`: before upgrading the control plane, what would change
and what would break.

* Agents, by version: which the control plane of VERSION would still serve under the
  compatibility rule (core/versions.py) and which it would refuse (upgrade those first).
* Stored resources: each one read back through the API and decoded with the kinds of this
  installation (its schemas and checks), then checked against the rest of its mesh with this
  installation's cross-resource checks (the ones apply runs: a route's references, one fault
  or limit per caller, retry against timeout...), so a resource the new version would reject,
  or of a kind it no longer knows, is named with the reason before the upgrade, not after it.
  Services a policy names that no dataplane serves are listed as warnings (apply's warning;
  not an incompatibility).

Exit 0 when nothing is incompatible, 1 otherwise (for scripts). Install the new version first
(e.g. in a virtualenv of its own) and run its `meshline upgrade-check`: the resources are checked
against the installed kinds."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from meshline.api.client import ApiClient
from meshline.cli.output import echo, table
from meshline.cli.resources import client_from
from meshline.core import versions
from meshline.core.errors import MeshlineError
from meshline.core.resource import KindRegistry, Resource

if TYPE_CHECKING:
    from meshline.render.policy_kind import MeshCheck

SHOWN_FIELDS = ("kind", "mesh", "name", "labels", "spec")  # what a stored resource is made of


@dataclass
class AgentGroup:
    version: str  # "" when unknown (never connected since versions were recorded)
    dataplanes: list[str] = field(default_factory=list)
    connected: int = 0
    refusal: str | None = None


@dataclass
class Report:
    control_plane: str
    target: str
    installed: str
    agents: list[AgentGroup]
    checked: int
    rejected: list[tuple[str, str, str, str]]  # kind, mesh, name, why
    warnings: list[tuple[str, str, str, str]] = field(default_factory=list)  # kind, mesh, name, what

    @property
    def refused_agents(self) -> list[AgentGroup]:
        return [g for g in self.agents if g.refusal is not None]

    @property
    def compatible(self) -> bool:
        return not self.refused_agents and not self.rejected

    def to_json(self) -> dict[str, Any]:
        return {
            "controlPlane": self.control_plane, "target": self.target, "installed": self.installed,
            "compatible": self.compatible,
            "agents": [{"version": g.version or None, "dataplanes": g.dataplanes, "connected": g.connected,
                        "refusal": g.refusal} for g in self.agents],
            "resourcesChecked": self.checked,
            "rejected": [{"kind": k, "mesh": m or None, "name": n, "why": w} for k, m, n, w in self.rejected],
            "warnings": [{"kind": k, "mesh": m or None, "name": n, "warning": w} for k, m, n, w in self.warnings],
        }  # fmt: skip


def group_agents(dataplanes: Iterable[Mapping[str, Any]], target: str) -> list[AgentGroup]:
    """Dataplanes (as the API lists them, with status) by agent version, each group with what
    a control plane of ``target`` would say to it."""
    groups: dict[str, AgentGroup] = {}
    for dp in dataplanes:
        status = dp.get("status") or {}
        version = str(status.get("agentVersion") or "")
        g = groups.setdefault(version, AgentGroup(version))
        g.dataplanes.append(f"{dp.get('mesh')}/{dp.get('name')}")
        g.connected += bool(status.get("connected"))
    for g in groups.values():
        g.refusal = versions.refusal(target, g.version) if g.version else None
    return sorted(groups.values(), key=lambda g: versions.parse(g.version) or (-1, -1, -1))


def checked_resources(docs: Iterable[Mapping[str, Any]], kinds: KindRegistry,
                      checks: Iterable[tuple[str, MeshCheck]] = (),
                      ) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:  # fmt: skip
    """(rejected, warnings): every stored resource the installed kinds would not accept, alone
    or against the rest of its mesh (``checks``: the installed cross-resource checks), with the
    reason; and apply's warnings (services no dataplane serves)."""
    from meshline.controlplane.unknown_services import known_services, warnings_for
    from meshline.render.policy_kind import MeshView, run_mesh_checks

    rejected: list[tuple[str, str, str, str]] = []
    warnings: list[tuple[str, str, str, str]] = []
    decoded: list[Resource] = []
    for doc in docs:
        kind, mesh, name = str(doc.get("kind")), str(doc.get("mesh") or ""), str(doc.get("name"))
        try:
            decoded.append(kinds.decode({k: doc[k] for k in SHOWN_FIELDS if k in doc}))
        except MeshlineError as err:
            rejected.append((kind, mesh, name, str(err)))
    for mesh in sorted({r.mesh for r in decoded if r.mesh}):
        mine = [r for r in decoded if r.mesh == mesh]
        view, known = MeshView.build(mesh, mine), known_services(mine)
        for r in mine:
            problems = run_mesh_checks(r, view, checks)
            if problems:
                rejected.append((r.kind, mesh, r.name, "; ".join(f"{p.path}: {p.message}" for p in problems)))
            warnings.extend((r.kind, mesh, r.name, w) for w in warnings_for(r, known))
    return rejected, warnings


def stored_resources(c: ApiClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every resource of every kind the control plane serves, its dataplanes)."""
    kinds = c.get("/api/v1/kinds")["items"]
    meshes = c.get("/api/v1/meshes")["items"]
    docs: list[dict[str, Any]] = list(meshes)
    dataplanes: list[dict[str, Any]] = []
    for mesh in meshes:
        for k in kinds:
            if not k.get("meshScoped", True):
                continue
            items = c.get(f"/api/v1/meshes/{mesh['name']}/{k['plural']}")["items"]
            docs.extend(items)
            if k["kind"] == "Dataplane":
                dataplanes.extend(items)
    return docs, dataplanes


def check(c: ApiClient, target: str, kinds: KindRegistry, checks: Iterable[tuple[str, MeshCheck]] = ()) -> Report:
    control_plane = str(c.get("/api/v1/health").get("version", "unknown"))
    docs, dataplanes = stored_resources(c)
    rejected, warnings = checked_resources(docs, kinds, checks)
    return Report(control_plane, target, versions.current(), group_agents(dataplanes, target), len(docs),
                  rejected, warnings)  # fmt: skip


def installed_kinds() -> KindRegistry:
    from meshline.kinds import default_kinds

    return default_kinds()


def installed_mesh_checks() -> list[tuple[str, MeshCheck]]:
    """The cross-resource checks apply runs in this installation, by the kind declaring each."""
    from meshline.policies import mesh_checks

    return mesh_checks()


def show(report: Report) -> None:
    echo(f"control plane {report.control_plane} -> {report.target}"
         f" (agents served after the upgrade: {versions.supported(report.target)})")  # fmt: skip
    rows = []
    for g in report.agents:
        if not g.version:
            verdict = "unknown: not connected since the control plane recorded versions"
        elif g.refusal is None:
            verdict = "served"
        else:
            verdict = "REFUSED: " + g.refusal
        shown = ", ".join(g.dataplanes[:5]) + (f" and {len(g.dataplanes) - 5} more" if len(g.dataplanes) > 5 else "")
        rows.append((g.version or "unknown", len(g.dataplanes), g.connected, verdict, shown))
    if rows:
        table(["AGENT", "DATAPLANES", "CONNECTED", f"WITH CONTROL PLANE {report.target}", "WHICH"], rows)
    else:
        echo("no dataplanes")
    against = f"meshline {report.installed}'s kinds"
    if report.installed != report.target:
        against += f" (this installation; install {report.target} and run its upgrade-check to check against it)"
    echo(f"resources: {report.checked} stored, checked against {against}: {len(report.rejected)} would be rejected")
    if report.rejected:
        table(["KIND", "MESH", "NAME", "WHY"], report.rejected)
    if report.warnings:
        echo(f"warnings (not incompatible; apply warns the same): {len(report.warnings)}")
        table(["KIND", "MESH", "NAME", "WARNING"], report.warnings)
    if report.compatible:
        echo(f"compatible: upgrading the control plane to {report.target} refuses no agent and rejects no resource")
    else:
        todo = []
        if report.refused_agents:
            todo.append(f"upgrade {sum(len(g.dataplanes) for g in report.refused_agents)} agent(s) first")
        if report.rejected:
            todo.append(f"fix or delete {len(report.rejected)} resource(s)")
        echo(f"incompatible: {' and '.join(todo)}, then check again")


@click.command("upgrade-check")
@click.option("--to", "target", default=None, metavar="VERSION",
              help="the control-plane version to check for (default: this installation's)")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def upgrade_check(ctx: click.Context, target: str | None, output: str) -> None:
    """What upgrading the control plane to VERSION would change and break: agents it would no
    longer serve, stored resources it would reject. Exit 1 if anything is incompatible."""
    target = target or versions.current()
    if versions.parse(target) is None:
        raise MeshlineError(f"--to {target!r} is not a version; write it as MAJOR.MINOR[.PATCH], e.g. 0.2.0")
    with client_from(ctx) as c:
        report = check(c, target, installed_kinds(), installed_mesh_checks())
    if output == "json":
        echo(json.dumps(report.to_json(), indent=2))
    else:
        show(report)
    if not report.compatible:
        sys.exit(1)
