"""The API under fuzzing (the issue's 43,077-case run found 500s and an OpenAPI document that
did not say what the server does): schemathesis generates requests from ``/openapi.json``,
valid and invalid, against a real control plane with auth on, with a fixed seed and a small
budget (a few hundred cases, well under a minute). Every response must be below 500 and
conform to the document: a documented status code, content type and body schema.

The full run (``docs/security.md``, "Fuzzing the API") is the same document with the
``st`` command and no budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, seed, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from tests.security.control_plane_process import ControlPlaneProcess, control_plane_process  # noqa: E402

EXAMPLES_PER_OPERATION = 10  # x ~30 operations: a few hundred cases
SEED = 20261203


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    with control_plane_process(Path(tmp_path_factory.mktemp("fuzz")) / "cp") as cp:
        yield cp


def _document() -> dict[str, Any]:
    from meshline.api.openapi import openapi_document
    from meshline.kinds import default_kinds

    return openapi_document(default_kinds())


# Built here, not fetched: schemathesis' lazy fixture loading does not work with this pytest.
# test_the_server_serves_this_document checks that it is what the server serves.
# The tap is a stream that ends only after `idle` seconds: tested on its own
# (test_bad_input.py), not by a fuzzer that would wait for each case.
schema = schemathesis.openapi.from_dict(_document()).exclude(path_regex=r"/tap$")


def test_the_server_serves_this_document(control_plane: ControlPlaneProcess) -> None:
    import httpx

    assert httpx.get(f"{control_plane.url}/openapi.json").json() == _document()


@schema.parametrize()
@seed(SEED)
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_every_response_matches_the_document(case: Any, control_plane: ControlPlaneProcess) -> None:
    case.call_and_validate(
        base_url=control_plane.url,
        # Not: positive_data_acceptance (a schema-valid body can still be refused with 422 by a
        # rule no JSON schema states: a reference to something that does not exist, the body
        # naming another resource than the URL, a policy conflicting with another), and
        # unsupported_method / allow_header_conformance (aiohttp routes /meshes/{mesh}/{plural}/
        # {name} generically, so a subsystem's path also answers the generic methods).
        excluded_checks=[checks.positive_data_acceptance, checks.unsupported_method,
                         checks.allow_header_conformance],
        headers={"Authorization": f"Bearer {control_plane.token()}"},
        timeout=10,
    )
