"""A failed TLS handshake on the xDS port does not spam the control plane's terminal with gRPC
core lines; the client that failed says what it tried (see test_cli_contexts for the agent)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import grpc

from meshline.security import crypto
from meshline.testing.mesh import wait_until
from meshline.testing.servers import free_port


def test_failed_xds_handshakes_leave_no_grpc_core_lines(tmp_path: Path) -> None:
    api, xds = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env.update({"MESHLINE_CONFIG": str(tmp_path / "config.yaml"), "MESHLINE_API_ADDRESS": f"127.0.0.1:{api}",
                "MESHLINE_XDS_ADDRESS": f"127.0.0.1:{xds}"})
    log = tmp_path / "cp.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "meshline", "control-plane", "--data-dir", str(tmp_path / "d")],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(lambda: "control plane ready" in log.read_text() or proc.poll() is not None, 60,
                   what="the control plane")
        assert proc.poll() is None, log.read_text()
        # 1. plaintext HTTP/2 to a TLS port
        with socket.create_connection(("127.0.0.1", xds), timeout=5) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            s.recv(100)
        # 2. gRPC clients that trust another CA (another control plane's), a few retries each
        other = crypto.new_root("another control plane", crypto.new_ec_key())
        creds = grpc.ssl_channel_credentials(root_certificates=crypto.cert_pem(other).encode())
        for _ in range(3):
            with grpc.secure_channel(f"127.0.0.1:{xds}", creds) as channel, \
                    contextlib.suppress(grpc.FutureTimeoutError):
                grpc.channel_ready_future(channel).result(timeout=1)
        # 3. a TLS client with the wrong CA
        ctx = ssl.create_default_context(cadata=crypto.cert_pem(other))
        with socket.create_connection(("127.0.0.1", xds), timeout=5) as raw, contextlib.suppress(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    assert "Handshake failed" not in text and "ssl_transport_security" not in text, text
