"""The agent's private Unix sockets: in a directory only its user can enter, each socket 0600.

Envoy's admin API, the SDS server (the workload's private key) and the xDS proxy (the
dataplane token's power) all listen on such sockets; file modes are what keeps every other
local user out, so they are checked, not assumed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import grpc

from meshline.core.errors import MeshlineError


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only we can enter, or refuse: a
    directory another user owns (say one made in /tmp before us) would let that user swap
    our sockets."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise MeshlineError(
            f"{path} is not a directory owned by this user (uid {os.getuid()}); remove it or pick another --work-dir"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)


async def serve_grpc(server: grpc.aio.Server, path: Path) -> None:
    """Start ``server`` on a Unix socket at ``path``, born 0600 in a private directory."""
    private_dir(path.parent)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a previous agent (the agent holds a lock)
    old_umask = os.umask(0o177)
    try:
        if server.add_insecure_port(f"unix:{path}") == 0:
            raise MeshlineError(f"cannot listen on {path}; is another agent using this work dir?")
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
