"""The origin: nginx serving a static 1 KB body, one worker, as the current user."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from benchmarks import tools
from benchmarks.procs import ProcessGroup, free_port, wait_http_ok
from benchmarks.scenarios.base import Upstream

BODY_BYTES = 1024
PATH = "/1k"


def nginx_config(root: Path, port: int, *, run_as_root: bool) -> str:
    # keepalive_requests: nginx's default (1000) would close every connection after 1000
    # requests, and the reconnects would be measured as proxy latency.
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};\n" if run_as_root else ""
    return f"""{user}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type text/plain;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root}/html;
        location / {{ }}
    }}
}}
"""


def start_nginx(workdir: Path, procs: ProcessGroup) -> tuple[Upstream, int]:
    """Start nginx in ``workdir``; return the upstream and the nginx master's PID."""
    nginx = tools.require("nginx")
    (workdir / "html").mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    (workdir / "html" / PATH.lstrip("/")).write_bytes(b"x" * BODY_BYTES)
    port = free_port()
    conf = workdir / "nginx.conf"
    # As root, nginx would hand its workers to "nobody", who cannot read our 0700 tmp dir.
    conf.write_text(nginx_config(workdir, port, run_as_root=os.geteuid() == 0))
    proc = procs.spawn(
        "nginx",
        [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf), "-g", "daemon off;"],
    )
    wait_http_ok("127.0.0.1", port, PATH, timeout=10, group=procs)
    return Upstream(host="127.0.0.1", port=port, path=PATH), proc.pid
