"""The render step of TrafficRecordings: an Envoy Lua filter on the inbounds a recording selects.

The filter runs right after the permission check (what was let in is what is recorded), samples
``samplePercent`` of the requests, and for each sampled one puts into the request's dynamic
metadata (namespace ``meshline.record``): the request and response headers with the redacted
ones replaced by ``[redacted]``, the bodies (base64) up to ``maxBodyBytes`` each and their full
sizes. Bodies are read as they stream past (``bodyChunks``), never buffered whole, so a large
upload is neither delayed nor refused. The access log the sidecar already streams carries the
metadata to the control plane (telemetry.convert reads it into ``LogRecord.capture``), where
`meshline record` is subscribed like a tap.

No recording selects an inbound: no filter is rendered, so not recording costs nothing
(benchmarks/RESULTS.md, "Recording off").
"""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2

from meshline.core.resource import Resource, spec_as
from meshline.learn.recording import KIND, TrafficRecordingSpec
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import ORDER_AUTHZ, InboundSection

LUA_FILTER = "envoy.filters.http.lua"
ORDER_CAPTURE = ORDER_AUTHZ + 1  # after RBAC: only what was let in
NAMESPACE = "meshline.record"

_LUA = r"""
local MAX = %(max)d
local SAMPLE = %(sample)s
local REDACT = %(redact)s
local NS = "%(ns)s"

local function headers_of(h)
  local out = {}
  for k, v in pairs(h) do
    local name = string.lower(k)
    if REDACT[name] then v = "[redacted]" end
    if out[name] then out[name] = out[name] .. ", " .. v else out[name] = v end
  end
  return out
end

local function read(handle)
  local parts, kept, total = {}, 0, 0
  for chunk in handle:bodyChunks() do
    local n = chunk:length()
    total = total + n
    if kept < MAX and n > 0 then
      local take = math.min(n, MAX - kept)
      parts[#parts + 1] = chunk:getBytes(0, take)
      kept = kept + take
    end
  end
  return table.concat(parts), total
end

function envoy_on_request(handle)
  if SAMPLE < 1 and math.random() >= SAMPLE then return end
  handle:streamInfo():dynamicMetadata():set(NS, "reqHeaders", headers_of(handle:headers()))
  local body, total = read(handle)
  -- objects of the stream do not survive the yields of bodyChunks(): ask again
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set(NS, "reqBody", handle:base64Escape(body))
  meta:set(NS, "reqBodyBytes", total)
end

function envoy_on_response(handle)
  if handle:streamInfo():dynamicMetadata():get(NS) == nil then return end
  handle:streamInfo():dynamicMetadata():set(NS, "respHeaders", headers_of(handle:headers()))
  local body, total = read(handle)
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set(NS, "respBody", handle:base64Escape(body))
  meta:set(NS, "respBodyBytes", total)
end
"""


def lua_source(spec: TrafficRecordingSpec) -> str:
    redact = "{" + ", ".join(f"[{json.dumps(h)}] = true" for h in spec.redacted()) + "}"
    return _LUA % {"max": spec.maxBodyBytes, "sample": repr(spec.samplePercent / 100.0), "redact": redact,
                   "ns": NAMESPACE}


def recording_for(section: InboundSection, mesh: MeshSnapshot) -> Resource | None:
    """The recording that selects this inbound (the one whose name sorts first, if several)."""
    inbound = section.inbound
    if inbound is None:
        return None
    for res in mesh.of_kind(KIND.kind):
        spec = spec_as(res, TrafficRecordingSpec)
        if any(sel.matches(inbound.tags) for sel in spec.destinations):
            return res
    return None


def configure_inbound(section: InboundSection, dataplane: Resource, mesh: MeshSnapshot) -> None:
    if section.http is None:
        return  # TCP: nothing to record at L7
    res = recording_for(section, mesh)
    if res is None:
        return
    spec = spec_as(res, TrafficRecordingSpec)
    cfg = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=lua_source(spec)))
    section.http.add_filter(ORDER_CAPTURE, LUA_FILTER, cfg)
    section.note(KIND.kind, res.name, f"records {spec.samplePercent:g}% of requests, bodies up to"
                 f" {spec.maxBodyBytes} bytes; redacts {', '.join(spec.redacted())}")


PLUGIN = Plugin(kind=KIND, inbound=configure_inbound)
