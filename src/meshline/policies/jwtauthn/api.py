"""JWTAuthentication: requests to a service must carry a valid JWT (end-user authentication).

    kind: JWTAuthentication
    mesh: default
    name: users
    spec:
      destinations: [{match: {service: edge}}]   # a gateway's service: checked where requests enter;
                                                 # a mesh service: checked by its sidecar (inbound)
      conf:
        issuer: https://login.example.test
        audiences: [web]                         # the token's aud must hold one of these
        jwks:                                    # the issuer's public keys, one of:
          inline: '{"keys": [...]}'              #   the JWKS document itself
          # file: /etc/meshline/jwks.json        #   a file on the proxy's host
          # uri: https://login.example.test/.well-known/jwks.json   # fetched and cached
          # cacheDuration: 5m
          # ca: <PEM>                            #   CA for the uri's server (default: the system's)
        claimToHeaders: [{claim: sub, header: x-user}]   # forwarded to the app
        forwardToken: false                      # keep the Authorization header for the app

A request without a token, with an expired one, one of another issuer or audience, or a bad
signature gets 401 from the proxy, with Envoy's reason in the ``www-authenticate`` header and
in ``meshline explain``.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Duration, Spec
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.fields import HEADER_NAME_RE

MAX_JWKS = 64 * 1024
_CLAIM_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Jwks(Spec):
    inline: str | None = Field(default=None, max_length=MAX_JWKS)
    file: str | None = None
    uri: str | None = None
    cache_duration: Duration | None = None
    ca: str | None = Field(default=None, max_length=MAX_JWKS)

    @model_validator(mode="after")
    def _one(self) -> Jwks:
        given = [n for n in ("inline", "file", "uri") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of inline (the JWKS JSON), file (a path on the proxy's host) or uri")
        if self.inline is not None:
            try:
                doc = json.loads(self.inline)
            except ValueError:
                raise ValueError("inline is not JSON; paste the issuer's JWKS document ({\"keys\": [...]})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
                raise ValueError('inline must be a JWKS document with at least one key: {"keys": [...]}')
        if self.file is not None and not self.file.startswith("/"):
            raise ValueError("file must be an absolute path on the proxy's host")
        if self.uri is not None:
            parts = urlsplit(self.uri)
            if parts.scheme != "https" or not parts.hostname:
                raise ValueError(f"'{self.uri}' must be an https:// URL (keys fetched over plain HTTP could be forged)")
        elif self.cache_duration is not None or self.ca is not None:
            raise ValueError("cacheDuration and ca are for uri only")
        return self


class ClaimHeader(Spec):
    claim: str
    header: str

    @field_validator("claim")
    @classmethod
    def _claim(cls, v: str) -> str:
        if not _CLAIM_RE.match(v):
            raise ValueError(f"'{v}' is not a claim name (letters, digits and _.:-; nested claims as a.b)")
        return v

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        low = v.lower()
        if not HEADER_NAME_RE.match(low) or low in ("host", "authorization"):
            raise ValueError(f"'{v}' cannot carry a claim; use a header of your own, e.g. x-user")
        return low


class JWTConf(Spec):
    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(default_factory=list)
    jwks: Jwks
    claim_to_headers: list[ClaimHeader] = Field(default_factory=list)
    forward_token: bool = False


class JWTAuthenticationSpec(SelectorSpec):
    conf: JWTConf


def _problems(r: Resource) -> list[FieldProblem]:
    spec = spec_as(r, JWTAuthenticationSpec)
    problems = []
    for i, sel in enumerate(spec.sources):
        if sel.match != {"service": "*"} and sel.match:
            problems.append(FieldProblem(f"spec.sources[{i}]", "a token is checked for every caller; remove sources"))
    seen: set[str] = set()
    for k, c in enumerate(spec.conf.claim_to_headers):
        if c.header in seen:
            problems.append(FieldProblem(f"spec.conf.claimToHeaders[{k}].header", f"'{c.header}' is used twice"))
        seen.add(c.header)
    return problems


KIND = KindInfo(
    kind="JWTAuthentication",
    plural="jwtauthentications",
    spec=JWTAuthenticationSpec,
    summary="End-user authentication: requests to a service (or a gateway) need a valid JWT, else 401",
    is_policy=True,
    aliases=("jwt", "jwtauthn"),
    validators=(_problems,),
    columns={"ISSUER": lambda r: spec_as(r, JWTAuthenticationSpec).conf.issuer},
)
