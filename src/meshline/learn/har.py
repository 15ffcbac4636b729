"""Recorded requests as an HTTP Archive (HAR 1.2), the format browsers' developer tools,
Charles, mitmproxy and many replay tools read. Bodies are kept as the sidecar captured them
(base64, ``encoding: base64`` in HAR terms) with their full sizes; a body cut at the
recording's cap says so in ``comment``. Meshline's own fields start with ``_`` (HAR's rule
for custom fields): ``_source`` (the caller), ``_version``, ``_dataplane``, ``_requestId``.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from meshline import __version__

PSEUDO = (":method", ":path", ":authority", ":scheme", ":status")


def _headers(h: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in sorted(h.items()) if k not in PSEUDO]


def _body_size(b64: str) -> int:
    return len(base64.b64decode(b64)) if b64 else 0


def entry(record: Mapping[str, Any]) -> dict[str, Any]:
    """One HAR entry from one recorded access-log record (``LogRecord.to_json`` with a capture)."""
    cap = record["capture"]
    req_h, resp_h = cap.get("reqHeaders", {}), cap.get("respHeaders", {})
    authority = req_h.get(":authority", record.get("authority", "")) or "localhost"
    path = req_h.get(":path", record.get("path", "/"))
    req_body, resp_body = cap.get("reqBody", ""), cap.get("respBody", "")
    started = datetime.datetime.fromtimestamp(record["time"], datetime.UTC)
    req: dict[str, Any] = {
        "method": record.get("method") or req_h.get(":method", "GET"),
        "url": f"http://{authority}{path}",
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": _headers(req_h),
        "queryString": [{"name": k, "value": v} for k, v in parse_qsl(path.partition("?")[2], keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": int(cap.get("reqBodyBytes", 0)),
    }
    if req_body or cap.get("reqBodyBytes"):
        req["postData"] = {"mimeType": req_h.get("content-type", ""), "text": req_body, "encoding": "base64"}
        if _body_size(req_body) < int(cap.get("reqBodyBytes", 0)):
            req["comment"] = f"body cut at {_body_size(req_body)} of {cap['reqBodyBytes']} bytes"
    content: dict[str, Any] = {"size": int(cap.get("respBodyBytes", 0)), "mimeType": resp_h.get("content-type", ""),
                               "text": resp_body, "encoding": "base64"}
    resp: dict[str, Any] = {
        "status": record.get("status", 0),
        "statusText": "",
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": _headers(resp_h),
        "content": content,
        "redirectURL": resp_h.get("location", ""),
        "headersSize": -1,
        "bodySize": int(cap.get("respBodyBytes", 0)),
    }
    if _body_size(resp_body) < int(cap.get("respBodyBytes", 0)):
        resp["comment"] = f"body cut at {_body_size(resp_body)} of {cap['respBodyBytes']} bytes"
    ms = float(record.get("durationMs", 0.0))
    return {
        "startedDateTime": started.isoformat().replace("+00:00", "Z"),
        "time": ms,
        "request": req,
        "response": resp,
        "cache": {},
        "timings": {"send": 0, "wait": ms, "receive": 0},
        "_source": record.get("source", ""),
        "_destination": record.get("destination", ""),
        "_version": record.get("destinationVersion", ""),
        "_dataplane": record.get("dataplane", ""),
        "_requestId": record.get("requestId", ""),
    }


def archive(entries: Iterable[dict[str, Any]], comment: str = "") -> dict[str, Any]:
    log: dict[str, Any] = {"version": "1.2", "creator": {"name": "meshline", "version": __version__},
                           "entries": list(entries)}
    if comment:
        log["comment"] = comment
    return {"log": log}


def body_bytes(b64: str) -> bytes:
    return base64.b64decode(b64) if b64 else b""
