"""The dashboard: a small single-page app served by the control plane at ``/``.

It is plain HTML, CSS and JavaScript modules shipped as package data (``static/``): no
build step, no third-party code. The page uses only the public REST API, like the CLI,
sending the token it was given (``#token=...`` or its sign-in form) as
``Authorization: Bearer``. The files themselves are served without authentication: they
hold no data, and a browser cannot attach a header to the first page load.

:func:`install` adds the routes to a control plane (called by ``server.factory``): the static
files, and the two API routes only the page needs (:mod:`.api`: who is signed in, which
dataplanes a policy shapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshline.dashboard.routes import STATIC_DIR, dashboard_url, routes

if TYPE_CHECKING:
    from meshline.controlplane.settings import Settings
    from meshline.extensions import Extensions

__all__ = ["STATIC_DIR", "dashboard_url", "install", "routes"]


def install(ext: Extensions, settings: Settings) -> None:
    from meshline.dashboard.api import DashboardApi

    api = DashboardApi(settings.grafana_url)
    ext.routes.append(routes)
    ext.routes.append(api.routes)
    ext.on_start.append(api.started)
