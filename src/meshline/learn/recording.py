"""TrafficRecording: while one exists, the inbound sidecars of a service (or one version of it)
capture the requests they let in and the answers: headers (secrets redacted in the sidecar,
before anything leaves it) and bodies up to a cap. `meshline record` writes one for the time
it records and deletes it after; the control plane deletes one whose ``until`` has passed (a
recorder that died), so a recording never outlives its purpose.

    kind: TrafficRecording
    mesh: default
    name: record-orders-1701600000
    spec:
      destinations: [{match: {service: orders, version: v1}}]   # whose inbound captures
      samplePercent: 100            # of the requests let in
      maxBodyBytes: 16384           # per body; the rest is counted, not kept
      redactHeaders: [x-api-key]    # besides authorization, proxy-authorization, cookie, set-cookie
      until: 1701600090             # Unix seconds

A recording is a resource so that it is visible (`meshline get trafficrecordings`: who is
capturing bodies right now is not a secret) and needs write rights, where `tap` needs read.

Cost when nothing records: nothing. The capture is an Envoy Lua filter rendered only into the
inbounds a recording selects (:mod:`.capture`); without one, no filter is there at all.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.selectors import ANY, SelectorSpec
from meshline.policies.trafficpermission.api import HEADER_NAME_RE

ALWAYS_REDACTED = ("authorization", "proxy-authorization", "cookie", "set-cookie")
MAX_BODY_LIMIT = 1024 * 1024  # an access-log entry carries the bodies: keep them well under gRPC's 4 MB
DEFAULT_MAX_BODY = 16 * 1024


class TrafficRecordingSpec(SelectorSpec):
    samplePercent: float = Field(default=100.0, gt=0, le=100)
    maxBodyBytes: int = Field(default=DEFAULT_MAX_BODY, ge=0, le=MAX_BODY_LIMIT)
    redactHeaders: list[str] = Field(default_factory=list, max_length=64)
    until: float = Field(gt=0)

    @field_validator("redactHeaders", mode="before")
    @classmethod
    def _headers(cls, v: object) -> object:
        if isinstance(v, list):
            out = []
            for h in v:
                if isinstance(h, str):
                    h = h.strip().lower()
                    if not HEADER_NAME_RE.match(h):
                        raise ValueError(f"'{h}' is not an HTTP header name")
                out.append(h)
            return out
        return v

    def redacted(self) -> tuple[str, ...]:
        return tuple(sorted({*ALWAYS_REDACTED, *self.redactHeaders}))


def _problems(res: Resource) -> list[FieldProblem]:
    spec = spec_as(res, TrafficRecordingSpec)
    out = []
    if any(sel.match.get("service", ANY) != ANY or len(sel.match) > 1 for sel in spec.sources):
        out.append(FieldProblem("spec.sources", "a recording captures every caller; leave sources out"))
    for i, sel in enumerate(spec.destinations):
        if sel.match.get("service", ANY) == ANY:
            out.append(FieldProblem(f"spec.destinations[{i}].match.service",
                                    "name the service to record, e.g. {service: orders}"))
    return out


KIND = KindInfo(
    kind="TrafficRecording",
    plural="trafficrecordings",
    spec=TrafficRecordingSpec,
    summary="Capture the requests and answers of a service's inbound sidecars (what `meshline record` runs)",
    aliases=("recording", "recordings"),
    validators=(_problems,),
    columns={
        "TO": lambda r: " ".join(s.describe() for s in spec_as(r, TrafficRecordingSpec).destinations),
        "SAMPLE": lambda r: f"{spec_as(r, TrafficRecordingSpec).samplePercent:g}%",
        "MAX-BODY": lambda r: str(spec_as(r, TrafficRecordingSpec).maxBodyBytes),
    },
)
