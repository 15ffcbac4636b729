"""Make Envoy reject a config on demand, to test the NACK path for real.

A control plane built with :func:`breakable_control_plane` gives the callers of a service a
route Envoy refuses (valid protobuf, an RE2 regex that does not compile) while a dataplane
named :data:`TRIGGER` exists in the mesh. Apply that dataplane to cause the NACK; delete it
to recover.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2

from meshline.controlplane.settings import Settings
from meshline.core.resource import KindInfo
from meshline.core.schema import Spec
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import OutboundSection
from meshline.server.controlplane import ControlPlane

TRIGGER = "trigger-nack"
BAD_REGEX = "(unclosed"


class _Trigger(Spec):
    pass


_KIND = KindInfo(kind="TestBrokenRoute", plural="testbrokenroutes", spec=_Trigger, summary="test only")


def _break_routes(section: OutboundSection, mesh: MeshSnapshot) -> None:
    if TRIGGER in mesh.dataplanes and section.route is not None:
        bad = route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(safe_regex=regex_pb2.RegexMatcher(regex=BAD_REGEX)),
            direct_response=route_components_pb2.DirectResponseAction(status=418),
        )
        section.route.virtual_hosts[0].routes.insert(0, bad)


def breakable_control_plane(settings: Settings) -> ControlPlane:
    from meshline.extensions import Extensions
    from meshline.server.factory import subsystems

    ext = Extensions()
    for install in subsystems():
        install(ext, settings)
    ext.render_steps.append(Plugin(kind=_KIND, outbound=_break_routes))
    return ControlPlane(settings, ext)


def trigger_dataplane(service: str, mesh: str = "default") -> str:
    """YAML of the dataplane whose presence breaks the routes of ``service``'s callers."""
    return f"""
kind: Dataplane
mesh: {mesh}
name: {TRIGGER}
spec:
  address: 127.0.0.9
  inbound: [{{port: 9, servicePort: 10, tags: {{service: {service}, protocol: http}}}}]
"""
