"""Retry validation: bad input is refused with its field path and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.kinds import default_kinds
from meshline.testing.policy_kit import problems

KINDS = default_kinds()


def retry(http: Any = None, **conf: Any) -> dict[str, Any]:
    if http is not None:
        conf["http"] = http
    return {"kind": "Retry", "mesh": "default", "name": "r",
            "spec": {"destinations": [{"match": {"service": "orders"}}], "conf": conf}}


def test_an_empty_policy_means_the_defaults() -> None:
    spec = KINDS.decode({"kind": "Retry", "mesh": "default", "name": "r"}).spec
    assert spec.to_json()["conf"] == {}


def test_every_condition_decodes() -> None:
    KINDS.decode(retry({"attempts": 1, "retryOn": ["5xx", "gateway-error", "reset", "connect-failure",
                        "retriable-4xx", "refused-stream", "retriable-status-codes", "cancelled",
                        "deadline-exceeded", "internal", "resource-exhausted", "unavailable"],
                        "retriableStatusCodes": [503, 409], "perTryTimeout": "250ms",
                        "backoff": {"baseInterval": "10ms", "maxInterval": "10ms"},
                        "budget": {"percent": 0, "minRetryConcurrency": 0}}, tcp={"maxConnectAttempts": 1}))


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (retry({"attempts": 0}), "spec.conf.http.attempts: must be 1 or more"),
        (retry({"attempts": -2}), "spec.conf.http.attempts: must be 1 or more"),
        (retry({"attempts": "many"}), "spec.conf.http.attempts: must be an integer"),
        (retry({"perTryTimeout": "0s"}), "spec.conf.http.perTryTimeout: must be longer than 0"),
        (retry({"perTryTimeout": "1 sec"}), "spec.conf.http.perTryTimeout: '1 sec' is not a duration"),
        (retry({"retryOn": ["5xx", "503"]}), "spec.conf.http.retryOn[1]: input should be '5xx'"),
        (retry({"retryOn": ["retriable-status-codes"]}),
         "spec.conf.http.retriableStatusCodes: is required when retryOn has 'retriable-status-codes'"),
        (retry({"retryOn": ["5xx"], "retriableStatusCodes": [409]}),
         "spec.conf.http.retryOn: does not include 'retriable-status-codes', so retriableStatusCodes would never"
         " be used; add it to retryOn or remove retriableStatusCodes"),
        (retry({"retriableStatusCodes": [700]}), "spec.conf.http.retriableStatusCodes: 700 is not an HTTP status code"),
        (retry({"backoff": {"baseInterval": "1s", "maxInterval": "100ms"}}),
         "spec.conf.http.backoff.maxInterval: 100ms is shorter than baseInterval 1s; raise maxInterval"),
        (retry({"backoff": {"baseInterval": "0ms"}}), "spec.conf.http.backoff.baseInterval: must be longer than 0"),
        (retry({"budget": {"percent": 150}}), "spec.conf.http.budget.percent: must be a percentage from 0 to 100"),
        (retry({"budget": {"percent": -1}}), "spec.conf.http.budget.percent: must be a percentage from 0 to 100"),
        (retry({"budget": {"minRetryConcurrency": -1}}),
         "spec.conf.http.budget.minRetryConcurrency: input should be greater than or equal to 0"),
        (retry(tcp={"maxConnectAttempts": 0}), "spec.conf.tcp.maxConnectAttempts: must be 1 or more"),
    ],
)
def test_bad_retries_name_the_field_and_the_fix(doc: dict[str, Any], expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found
