"""``render(dataplane, mesh) -> RenderResult``: the pure function from resources to Envoy config."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshline.core.dataplane import DataplaneSpec, Inbound
from meshline.core.errors import MeshlineError
from meshline.core.resource import Resource
from meshline.render import egress_gateway, external, proxies, transparent
from meshline.render.inbound import inbound_section
from meshline.render.mesh_snapshot import Carry, MeshSnapshot
from meshline.render.outbound import outbound_section
from meshline.render.plugins import Plugin
from meshline.render.sections import Applied, InboundSection, OutboundSection, Section, SectionId
from meshline.xds.snapshot import Packed, Snapshot, TypeSlot


class RenderError(MeshlineError):
    """A generator or policy failed for one dataplane; names which one."""


@dataclass(frozen=True)
class RenderResult:
    snapshot: Snapshot
    applied: tuple[Applied, ...]
    # Services whose endpoints this config read ("*": all of them; "!": something untracked):
    # when they change, the dataplane needs rendering again.
    reads: frozenset[str] = frozenset()
    # The sections it was assembled from (see ``previous`` in :func:`render`).
    parts: tuple[object, ...] = field(default=(), compare=False, repr=False)

    @property
    def sections(self) -> tuple[RenderedSection, ...]:
        """Each section's own resources and policies, by structured id (goldens per section)."""
        return tuple(p for p in self.parts if isinstance(p, RenderedSection))


@dataclass(frozen=True)
class RenderedSection:
    """What one section contributed to a dataplane's config (see :attr:`RenderResult.sections`)."""

    id: SectionId
    resources: dict[str, dict[str, Packed]]  # type -> name -> resource
    applied: tuple[Applied, ...]


_Part = RenderedSection


def _run(step: str, fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except MeshlineError:
        raise
    except Exception as err:
        raise RenderError(f"{step} failed: {type(err).__name__}: {err}") from err


def _finish(section: Section) -> _Part:
    by_type = {t: {p.name: p for p in items} for t, items in section.finalize().items()}
    return _Part(section.section_id, by_type, tuple(section.applied))


def _outbound_part(
    source_tags: tuple[dict[str, str], ...], outbound_json: str, mesh: MeshSnapshot, plugins: Sequence[Plugin],
    proxy: str = "sidecar",
) -> _Part:
    from meshline.core.dataplane import Outbound

    outbound = Outbound.model_validate_json(outbound_json)
    section = outbound_section(source_tags, outbound, mesh, proxy)
    for plugin in plugins:
        if plugin.outbound is not None:
            _run(f"policy {plugin.kind.kind} on {section.target}", plugin.outbound, section, mesh)
    return _finish(section)


def _inbound_part(dataplane: Resource, inbound: Inbound, mesh: MeshSnapshot, plugins: Sequence[Plugin]) -> _Part:
    section = inbound_section(dataplane, inbound, mesh)
    for plugin in plugins:
        if plugin.inbound is not None:
            _run(f"policy {plugin.kind.kind} on {section.target}", plugin.inbound, section, dataplane, mesh)
    return _finish(section)


def _gateway_sections(dataplane: Resource, mesh: MeshSnapshot, plugins: Sequence[Plugin]) -> list[InboundSection]:
    """A gateway's entry listeners: built by the gateway generators, then shaped by the inbound
    kinds that apply on a gateway (a rate limit on the gateway's service)."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    source_tags = tuple(dict(sorted(t.items())) for t in spec.tag_sets())

    def backend(service: str) -> OutboundSection:
        from meshline.core.dataplane import Outbound

        section = outbound_section(source_tags, Outbound(port=spec.inbound[0].port, service=service), mesh, "gateway")
        for plugin in plugins:
            if plugin.outbound is not None and plugin.gateway is None:
                _run(f"policy {plugin.kind.kind} on gateway backend {service}", plugin.outbound, section, mesh)
        return section

    sections: list[InboundSection] = []
    for plugin in plugins:
        if plugin.gateway is not None:
            try:
                sections.extend(plugin.gateway(dataplane, mesh, backend))
            except MeshlineError:
                raise
            except Exception as err:
                raise RenderError(f"{plugin.kind.kind} generator failed: {type(err).__name__}: {err}") from err
    for section in sections:
        for plugin in plugins:
            if plugin.inbound is not None and plugin.on_gateway:
                _run(f"policy {plugin.kind.kind} on {section.target}", plugin.inbound, section, dataplane, mesh)
    return sections


def _outbound_keys(spec: DataplaneSpec) -> tuple[tuple[dict[str, str], ...], str, tuple[str, ...]]:
    source_tags = tuple(dict(sorted(t.items())) for t in spec.tag_sets())
    return source_tags, json.dumps(source_tags, sort_keys=True), tuple(o.model_dump_json() for o in spec.outbound)


def render(
    dataplane: Resource,
    mesh: MeshSnapshot,
    plugins: Sequence[Plugin] = (),
    previous: RenderResult | None = None,
) -> RenderResult:
    """``previous``: this dataplane's last result. Only saves work: when every section is the
    same as then, it is returned as is; a type whose resources are unchanged keeps its slot."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    parts: list[_Part] = []
    with mesh.recording() as reads:
        # Sections are memoized with a carry: a later snapshot reuses them while the dataplane,
        # the policies selecting their service and the endpoints they read are unchanged.
        owner = (dataplane.name, dataplane.version)
        configurers = tuple(map(id, plugins))  # a piece is only valid for the plugins that made it
        sidecar = spec.proxy == "sidecar"
        if spec.proxy == "egress-gateway":  # render/egress_gateway.py
            parts.extend(egress_gateway.parts(dataplane, mesh, plugins, _run, _finish))
        elif not sidecar:  # a gateway's or zone proxy's own generators (render/proxies.py)
            entry = _gateway_sections(dataplane, mesh, plugins) if spec.proxy == "gateway" else []
            parts.extend(proxies.parts(dataplane, mesh, _finish, entry))
        for index, inbound in enumerate(spec.inbound if sidecar and not spec.transparent else ()):
            parts.append(
                mesh.memoize(
                    ("inbound", owner, index, configurers),
                    lambda inbound=inbound: _inbound_part(dataplane, inbound, mesh, plugins),  # type: ignore[misc]
                    Carry(frozenset({inbound.service}), owner),
                )
            )

        # Outbound config depends only on the caller's tags and the outbound itself, so
        # every caller with the same tags shares one rendering.
        source_tags, tags_key, outbounds = mesh.memoize(
            ("outbound keys", owner), lambda: _outbound_keys(spec), Carry(frozenset(), owner)
        )
        if spec.transparent is not None:  # the capture listeners (their inbounds are chains there)
            parts.extend(transparent.parts(dataplane, mesh, plugins, _run, _finish, tags_key, source_tags))
        reaching = spec.outbound if spec.proxy in ("sidecar", "gateway") else []  # zone proxies: SNI only
        for outbound, ob_json in zip(reaching, outbounds, strict=False):
            parts.append(
                mesh.memoize(
                    ("outbound", spec.proxy, tags_key, ob_json, configurers),
                    lambda ob_json=ob_json: _outbound_part(source_tags, ob_json, mesh, plugins, spec.proxy),  # type: ignore[misc]
                    # the destination policies select: an outbound by host is its ExternalService
                    Carry(frozenset({external.resolve(mesh, outbound.service) or outbound.service})),
                )
            )

    if (
        previous is not None
        and len(previous.parts) == len(parts)
        and all(a is b for a, b in zip(previous.parts, parts, strict=True))
        and previous.reads == reads
    ):
        return previous
    merged: dict[str, dict[str, Packed]] = {}
    applied: list[Applied] = []
    for part in parts:
        applied.extend(part.applied)
        for type_url, items in part.resources.items():
            slot = merged.get(type_url)
            if slot is None:
                merged[type_url] = dict(items)
                continue
            if not slot.keys().isdisjoint(items):  # sections may share a resource, if equal
                for name in slot.keys() & items.keys():
                    if slot[name].digest != items[name].digest:
                        raise RenderError(
                            f"two sections of {dataplane.name} render different '{name}' resources;"
                            " check for outbounds to one service with conflicting policies"
                        )
            slot.update(items)
    before = previous.snapshot.slots if previous is not None else {}
    slots: dict[str, TypeSlot] = {}
    for type_url, resources in merged.items():
        last = before.get(type_url)
        slots[type_url] = last if last is not None and last.holds(resources) else TypeSlot.of(resources.values())
    return RenderResult(Snapshot(slots), tuple(applied), frozenset(reads), tuple(parts))
