"""The ingress gateway's kinds: MeshGateway (its listeners) and MeshGatewayRoute (what they route).

Gateway API ``Gateway``, and ``HTTPRoute``/``GRPCRoute``/``TLSRoute``/``TCPRoute`` whose
parentRefs name a Gateway, are translated into these (policies/translate/gateway_api.py).
"""

from meshline.policies.gateway.plugin import KINDS, MESH_CHECKS, PLUGIN

__all__ = ["KINDS", "MESH_CHECKS", "PLUGIN"]
