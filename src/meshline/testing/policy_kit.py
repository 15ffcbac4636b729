"""The shared policy test kit: what every policy kind's tests need, once.

* :func:`problems` what ``meshline apply`` would refuse in some documents, as
  ``"field.path: message"`` strings: the kind's schema and checks (decode), then every
  policy kind's apply-time :class:`~meshline.render.policy_kind.MeshCheck` over the mesh
  as the apply would leave it: the same checks, in the same way, as the control plane.
* :func:`load_applied` documents as a golden input: refused unless ``meshline apply``
  would take them (so no golden pins a state the product refuses).
* :func:`section_yaml` / :func:`check_section_golden` the part of a rendering one section
  made (by its structured :class:`~meshline.render.sections.SectionId`), for goldens per
  section under test: a golden of one outbound does not change when an inbound does.
* :func:`sections_changed_by` / :func:`check_policy_goldens` which sections a policy kind
  changed (a rendering with its policies against one without them), and goldens of exactly
  the sections its policies shaped, each changed section among them.
* :func:`envoy_accepts` the real Envoy's verdict (``envoy --mode validate``) on a rendering.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.policies import mesh_checks
from meshline.render import envoy
from meshline.render.policy_kind import MeshView, run_mesh_checks
from meshline.render.render import RenderResult
from meshline.render.sections import SectionId
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT, Packed


class RefusedInput(AssertionError):
    """A test input ``meshline apply`` would refuse."""


def _decode(docs: Iterable[Any]) -> tuple[list[Resource], list[str]]:
    kinds = default_kinds()
    resources: list[Resource] = []
    found: list[str] = []
    for doc in docs:
        try:
            resources.append(kinds.decode(doc))
        except ValidationError as err:
            found.extend(str(p) for p in err.problems)
    return resources, found


def apply_problems(resources: Sequence[Resource]) -> list[FieldProblem]:
    """The apply-time mesh checks of ``resources`` applied together (each against all of them)."""
    checks = mesh_checks()
    found: list[FieldProblem] = []
    views: dict[str, MeshView] = {}
    for res in resources:
        if not res.mesh or not any(c.runs_on(kind, res) for kind, c in checks):
            continue
        view = views.get(res.mesh)
        if view is None:
            view = views[res.mesh] = MeshView.build(res.mesh, (), resources)
        found.extend(run_mesh_checks(res, view, checks))
    return found


def problems(docs: Any) -> list[str]:
    """What ``meshline apply`` of ``docs`` (one document, a list, or YAML text) would refuse."""
    if isinstance(docs, str):
        docs = [d for d in yaml.safe_load_all(docs) if d is not None]
    elif isinstance(docs, dict):
        docs = [docs]
    resources, found = _decode(docs)
    return found + [str(p) for p in apply_problems(resources)]


def load_applied(text: str, where: str = "input") -> list[Resource]:
    """The resources of YAML ``text``; :class:`RefusedInput` if ``meshline apply`` would refuse them."""
    resources, found = _decode(d for d in yaml.safe_load_all(text) if d is not None)
    found += [str(p) for p in apply_problems(resources)]
    if found:
        raise RefusedInput(f"{where}: meshline apply refuses it, so no golden may pin it:\n  " + "\n  ".join(found))
    return resources


# -- goldens per section ---------------------------------------------------------------
def section_yaml(result: RenderResult, section: SectionId | str) -> str:
    """The resources and policies one section (e.g. ``"sidecar/outbound/15001"``) rendered."""
    wanted = str(section)
    part = next((p for p in result.sections if str(p.id) == wanted), None)
    if part is None:
        known = ", ".join(str(p.id) for p in result.sections)
        raise AssertionError(f"no section {wanted} in this rendering; it has {known}")
    out: dict[str, Any] = {"section": wanted}
    for type_url in sorted(part.resources, key=lambda t: SHORT.get(t, t)):
        items = part.resources[type_url]
        if items:
            out[SHORT.get(type_url, type_url)] = [
                json.loads(json_format.MessageToJson(items[name].any, sort_keys=True)) for name in sorted(items)
            ]
    out["policies"] = [a.to_json() for a in part.applied]
    return yaml.safe_dump(out, sort_keys=False, width=120)


def check_section_golden(result: RenderResult, section: SectionId | str, golden: Path) -> None:
    """Compare one section with its golden file (``UPDATE_GOLDEN=1`` rewrites it; review the diff)."""
    actual = section_yaml(result, section)
    if os.environ.get("UPDATE_GOLDEN") == "1" or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual)
        assert os.environ.get("UPDATE_GOLDEN") == "1", f"{golden} did not exist; wrote it. Review it and re-run."
        return
    assert actual == golden.read_text(), (
        f"section {section} differs from {golden}; if intended, re-run with UPDATE_GOLDEN=1 and review the diff"
    )


def _digests(items: dict[str, dict[str, Packed]]) -> dict[str, dict[str, bytes]]:
    return {t: {n: p.digest for n, p in named.items()} for t, named in items.items() if named}


def _outside_sections(result: RenderResult) -> dict[str, dict[str, bytes]]:
    inside = {(t, n) for part in result.sections for t, named in part.resources.items() for n in named}
    return {
        t: {n: p.digest for n, p in slot.resources.items() if (t, n) not in inside}
        for t, slot in result.snapshot.slots.items()
    }


def sections_changed_by(result: RenderResult, baseline: RenderResult) -> list[str]:
    """The sections of ``result`` that differ from ``baseline`` (the same mesh without the
    policies under test): changed, added, or only in ``baseline`` (removed); ``"outside
    sections"`` when a resource no section owns differs."""
    before = {str(p.id): _digests(p.resources) for p in baseline.sections}
    after = {str(p.id): _digests(p.resources) for p in result.sections}
    changed = sorted(s for s in before.keys() | after.keys() if before.get(s) != after.get(s))
    if _outside_sections(result) != _outside_sections(baseline):
        changed.append("outside sections")
    return changed


def section_file(section: SectionId) -> str:
    """A section's part of a golden file name: ``outbound-15001`` (``-name`` where a port holds several)."""
    return f"{section.role}-{section.port}" + (f"-{section.name}" if section.name else "")


def check_policy_goldens(
    result: RenderResult, baseline: RenderResult, kinds: frozenset[str], golden_dir: Path, stem: str
) -> None:
    """Goldens ``<stem>.<section>.golden.yaml`` of each section a policy of ``kinds`` shaped;
    every section those policies changed (against ``baseline``) must be among them, and no
    golden of ``stem`` may be left over."""
    pinned = sorted({p.id for p in result.sections if any(a.kind in kinds for a in p.applied)})
    assert pinned, f"{stem}: no policy of {sorted(kinds)} shaped any section"
    unpinned = set(sections_changed_by(result, baseline)) - {str(s) for s in pinned}
    assert not unpinned, f"{stem}: {sorted(unpinned)} changed, but no policy of {sorted(kinds)} noted it there"
    expected = {f"{stem}.{section_file(s)}.golden.yaml" for s in pinned}
    for section in pinned:
        check_section_golden(result, section, golden_dir / f"{stem}.{section_file(section)}.golden.yaml")
    suffix = ".golden.yaml"
    present = {
        p.name for p in golden_dir.glob(f"{stem}.*{suffix}") if "." not in p.name[len(stem) + 1 : -len(suffix)]
    }
    assert present == expected, f"stale or missing goldens for {stem}: {sorted(present ^ expected)}"


# -- the real Envoy's verdict ----------------------------------------------------------
def _unpack(result: RenderResult, type_url: str, cls: type) -> dict[str, Any]:
    slot = result.snapshot.slots.get(type_url)
    out: dict[str, Any] = {}
    for name, packed in (slot.resources.items() if slot else ()):
        msg = cls()
        packed.any.Unpack(msg)
        out[name] = msg
    return out


def static_bootstrap(result: RenderResult, node: str = "default.web-1", cluster: str = "web") -> bootstrap_pb2.Bootstrap:
    """The rendering as static config Envoy can validate: EDS endpoints and RDS routes inlined,
    plus the clusters the agent's bootstrap brings (SDS for certificates, the control plane
    for access logs)."""
    routes = _unpack(result, ROUTE, route_pb2.RouteConfiguration)
    endpoints = _unpack(result, ENDPOINT, endpoint_pb2.ClusterLoadAssignment)
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id, boot.node.cluster = node, cluster
    for c in _unpack(result, CLUSTER, cluster_pb2.Cluster).values():
        if c.type == cluster_pb2.Cluster.EDS:
            cla = endpoints[c.eds_cluster_config.service_name or c.name]
            c.ClearField("eds_cluster_config")
            c.type = cluster_pb2.Cluster.STATIC
            c.load_assignment.CopyFrom(cla)
        boot.static_resources.clusters.append(c)
    for lst in _unpack(result, LISTENER, listener_pb2.Listener).values():
        for chain in lst.filter_chains:
            for f in chain.filters:
                if f.name != "envoy.filters.network.http_connection_manager":
                    continue
                h = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(h)
                if h.HasField("rds"):
                    h.route_config.CopyFrom(routes[h.rds.route_config_name])
                f.typed_config.Pack(h)
        boot.static_resources.listeners.append(lst)
    present = {c.name for c in boot.static_resources.clusters}
    if names.SDS_CLUSTER not in present:
        sds = envoy.static_cluster(names.SDS_CLUSTER, "127.0.0.1", 1, "tcp")
        opts = http_protocol_options_pb2.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.SetInParent()
        sds.typed_extension_protocol_options[envoy.HTTP_PROTOCOL_OPTIONS].CopyFrom(envoy.packed(opts))
        boot.static_resources.clusters.append(sds)
    if names.XDS_CLUSTER not in present:
        boot.static_resources.clusters.append(envoy.static_cluster(names.XDS_CLUSTER, "127.0.0.1", 15678, "grpc"))
    return boot


def envoy_binary() -> str:
    from meshline.agent.process import find_envoy

    return find_envoy()


def validate(path: Path) -> None:
    """Fail with Envoy's own words if it rejects the bootstrap at ``path`` (``--mode validate``).

    Envoy 1.40's validation mode says ``configuration '...' OK`` and then crashes while tearing
    down when a stats access logger shares its scope by name (render/metrics.py): the verdict
    line is what counts; a real Envoy runs the same config and stops cleanly (the e2e tests)."""
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "critical"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    verdict = f"configuration '{path}' OK" in proc.stdout
    teardown_crash = proc.returncode == -signal.SIGSEGV and "Caught Segmentation fault" in proc.stderr
    assert proc.returncode == 0 or (verdict and teardown_crash), \
        f"Envoy rejects the rendered config:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"


def envoy_accepts(result: RenderResult, work: Path, node: str = "default.web-1", cluster: str = "web") -> None:
    """Fail with Envoy's own words if it would reject this config (``envoy --mode validate``)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "validate.json"
    path.write_text(json_format.MessageToJson(static_bootstrap(result, node, cluster)))
    validate(path)
