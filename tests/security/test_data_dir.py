"""Finding 3: a provided CA's private key was readable by every local user.

The attack: the data dir was 0755 and ``meshline.db``/``meshline.db-wal`` 0644, and ``nobody``
found the plaintext PEM of a provided CA key in the WAL. Against a real control plane process
whose data dir sits in a directory every user may enter:

* as ``nobody``: the data dir cannot be listed, and the database, its WAL and every other file
  in it cannot be opened, by path either;
* the provided key's PEM (its base64 body, or the key's DER) is in no file of the data dir,
  while the control plane runs and after it stopped; the CA still signs (the key was sealed,
  not lost);
* a data dir an older version left 0755 with 0644 files is tightened on start, with a warning.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshline.security import crypto
from meshline.security.workload_identity import make_csr
from tests.security.control_plane_process import ControlPlaneProcess, control_plane_process
from tests.security.support import require_attacker, run_as_attacker

ATTACK = """
import json, os, sys
data_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ["DATA_DIR"]
out = {"listed": None, "opened": []}
try:
    out["listed"] = os.listdir(data_dir)
except OSError as err:
    out["list_error"] = type(err).__name__
for name in ("meshline.db", "meshline.db-wal", "meshline.db-shm", "kek", "admin.token", "cp-ca.pem"):
    try:
        with open(os.path.join(data_dir, name), "rb") as f:
            f.read(1)
        out["opened"].append(name)
    except OSError:
        pass
print(json.dumps(out))
"""


@pytest.fixture
def shared_parent() -> Iterator[Path]:
    """A directory every local user may enter (as /var/lib is): the data dir's own mode is all
    that stands between the attacker and the files."""
    require_attacker()
    parent = Path(tempfile.mkdtemp(prefix="meshline-datadir-", dir="/tmp"))
    os.chmod(parent, 0o755)
    try:
        yield parent
    finally:
        for path in sorted(parent.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
        parent.rmdir()


def provided_ca() -> tuple[str, str, crypto.PrivateKey]:
    key = crypto.new_ec_key()
    cert = crypto.new_root("Corp Root", key)
    return crypto.cert_pem(cert), crypto.key_pem(key), key


def secrets_of(key: crypto.PrivateKey, key_pem: str) -> list[bytes]:
    """What would give the key away: its PEM body lines and its DER, in any file."""
    body = [line.encode() for line in key_pem.splitlines() if line and not line.startswith("-----")]
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return [*body, der]


def assert_nowhere(data_dir: Path, needles: list[bytes]) -> None:
    for path in data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for needle in needles:
                assert needle not in content, f"the provided CA key is in {path} in clear"


def attack(cp: ControlPlaneProcess) -> dict[str, object]:
    result = run_as_attacker(ATTACK, env={"DATA_DIR": str(cp.data_dir)})
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def apply_provided_mesh(cp: ControlPlaneProcess, cert_pem: str, key_pem: str) -> None:
    mesh = {"kind": "Mesh", "name": "corp", "spec": {"mtls": {"ca": {"type": "provided", "cert": cert_pem, "key": key_pem}}}}
    with cp.client() as c:
        r = c.post("/api/v1/apply", json={"resources": [mesh]})
        assert r.status_code == 200, r.text
        # the CA is usable: the key was sealed, not lost
        csr = make_csr(crypto.new_ec_key(), "spiffe://meshline.local/corp/orders")
        r = c.post("/api/v1/meshes/corp/certificates", json={"csr": csr, "service": "orders"})
        assert r.status_code == 200, r.text
        assert cert_pem.strip() in r.json()["trustBundle"]


def test_other_users_cannot_read_the_store_and_no_key_is_on_disk_in_clear(shared_parent: Path) -> None:
    data_dir = shared_parent / "data"
    cert_pem, key_pem, key = provided_ca()
    with control_plane_process(data_dir) as cp:
        apply_provided_mesh(cp, cert_pem, key_pem)
        assert (data_dir / "meshline.db-wal").exists(), "the attack needs the WAL to exist"
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for path in data_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        seen = attack(cp)
        assert seen["listed"] is None and seen["opened"] == [], seen
        assert_nowhere(data_dir, secrets_of(key, key_pem))
    assert_nowhere(data_dir, secrets_of(key, key_pem))  # after the WAL was checkpointed too
    stored = sqlite3.connect(data_dir / "meshline.db").execute(
        "SELECT spec FROM resources WHERE kind='Mesh' AND name='corp'"
    ).fetchone()[0]
    assert json.loads(stored)["mtls"]["ca"]["key"].startswith("kek1:")


def test_a_loose_data_dir_from_an_older_version_is_tightened_on_start(shared_parent: Path) -> None:
    data_dir = shared_parent / "old"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    old = os.umask(0o022)
    try:  # as an older version left it: a database (and WAL) other users may read
        db = sqlite3.connect(data_dir / "meshline.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE leftover (x)")
        db.commit()
        db.close()
        (data_dir / "notes.txt").write_text("anything kept here\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((data_dir / "meshline.db").stat().st_mode) == 0o644
    with control_plane_process(data_dir) as cp:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for path in data_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        seen = attack(cp)
        assert seen["listed"] is None and seen["opened"] == [], seen
        log = cp.log()
        assert f"data dir {data_dir} was mode 755; made it 700" in log
        assert f"{data_dir / 'meshline.db'} was mode 644; made it 600" in log
