"""Where a control plane listens and keeps its data unless told otherwise.

Shared by the control plane's settings, the API clients and the agent; it lives in core so
that the agent and the clients need not import the control plane to know them.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_API_PORT = 15681
DEFAULT_XDS_PORT = 15678


def default_data_dir() -> Path:
    return Path(os.environ.get("MESHLINE_DATA_DIR", Path.home() / ".meshline"))


def is_local(url: str) -> bool:
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
