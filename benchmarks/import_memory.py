"""``python -m benchmarks.import_memory [MODULE ...]``: private memory each import adds.

Each module is imported in turn into a fresh interpreter and the growth of its Pss_Anon
(``/proc/self/smaps_rollup``) is printed: where a Python process's private memory comes
from before it does anything. The default list follows what ``meshline dataplane`` (the
agent) loads; its output is saved in ``profiles/agent-memory-imports.txt``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

AGENT_IMPORTS = (
    "asyncio",
    "google.protobuf",
    "grpc",
    "cryptography.x509",
    "pydantic",
    "yaml",
    "aiohttp",
    "httpx",
    "envoy.config.bootstrap.v3.bootstrap_pb2",
    "meshline.core.dataplane",
    "meshline.xds.stat_names",
    "meshline.agent.metrics",
    "meshline.agent.agent",
    "meshline.cli.agent",
    "meshline.cli.main",
)


def pss_anon_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss_Anon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(modules: list[str]) -> None:
    start = last = pss_anon_mb()
    print(f"{'interpreter':48} {start:6.1f} MB")
    for name in modules:
        importlib.import_module(name)
        now = pss_anon_mb()
        print(f"+ {name:46} {now - last:+6.1f} MB  = {now:6.1f} MB")
        last = now


if __name__ == "__main__":
    main(sys.argv[1:] or list(AGENT_IMPORTS))
