"""Rendering: ``render(dataplane, mesh snapshot) -> Envoy resources``, a pure function.

Layout:
* :mod:`.mesh_snapshot` the immutable input (everything in one mesh at one revision);
* :mod:`.sections` the mutable per-listener builders policies configure;
* :mod:`.envoy` small constructors for Envoy protos used by several generators;
* :mod:`.inbound`, :mod:`.outbound` the base generators;
* :mod:`.plugins` the contract policy packages implement;
* :mod:`.render` runs generators, then policy plugins in order, then finalizes.
"""
