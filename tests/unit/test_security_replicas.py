"""Two control-plane replicas on one PostgreSQL store: they share the token signing key and the
mesh CAs (sealed with one KEK), and a revocation on one is refused on the other at once.

Needs PostgreSQL (see tests/store/test_postgres.py): skipped locally without it, a failure in CI.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest

from meshline.core.errors import Unauthorized
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.security import crypto
from meshline.security.ca import CAManager, check_csr
from meshline.security.tokens import TokenService
from meshline.security.workload_identity import make_csr
from meshline.store.postgres import PostgresStore
from tests.store.test_postgres import admin_url, database_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres
ID = "spiffe://meshline.local/default/orders"


@pytest.fixture
async def replicas(
    database_url: str,  # noqa: F811 (the fixture imported above)
) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(default_kinds(), database_url), PostgresStore(default_kinds(), database_url)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_replicas_share_keys_and_see_revocations(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    store_a, store_b = replicas
    kek = crypto.KeyEncryptor.generate()  # the KEK file copied to both replicas
    tok_a, tok_b = TokenService(store_a, kek), TokenService(store_b, kek)
    await tok_a.start()
    await tok_b.start()
    issued = await tok_a.issue("dataplane", mesh="default", service="orders")
    assert tok_b.verify(issued.token).service == "orders"

    await tok_a.revoke(issued.claims.id)

    def refused_on_b() -> bool:
        try:
            tok_b.verify(issued.token)
        except Unauthorized as err:
            return "revoked" in str(err)
        return False

    await eventually(refused_on_b)

    await store_a.create(Resource(kind="Mesh", name="default", spec=MeshSpec()))
    ca_a, ca_b = CAManager(store_a, kek), CAManager(store_b, kek)
    await ca_a.start()
    await ca_b.start()
    one = await ca_a.sign("default", check_csr(make_csr(crypto.new_ec_key()), ID), ID, dt.timedelta(hours=1))
    two = await ca_b.sign("default", check_csr(make_csr(crypto.new_ec_key()), ID), ID, dt.timedelta(hours=1))
    assert one.ca_id == two.ca_id and one.trust_bundle == two.trust_bundle
    for svc in (ca_a, ca_b):
        await svc.stop()
    for t in (tok_a, tok_b):
        await t.stop()
