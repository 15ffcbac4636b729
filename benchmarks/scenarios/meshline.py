"""(b) Meshline: the same hop through two Meshline sidecars, configured by a real control plane.

    client --HTTP/1.1--> Envoy (client's sidecar) --mTLS--> Envoy (app's sidecar) --HTTP/1.1--> nginx

``meshline control-plane`` with its defaults (SQLite store, token auth, xDS over TLS, mesh
``default`` in strict mTLS, access logs streamed to the control plane), a TrafficPermission
letting ``client`` call ``app`` (strict mTLS denies by default), and two
``meshline dataplane`` agents, each starting its Envoy (``--concurrency 1``) and serving it
its certificate over SDS. The client's sidecar reaches ``app`` on a local outbound port.

Refuses to measure plaintext: the scenario fails unless the mesh is in strict mTLS and the
caller's sidecar has done TLS handshakes to the app's cluster.

Measured processes: both agents and both Envoys (a sidecar is agent + Envoy, as in the
targets). The control plane is measured too, but not counted in the sidecar figures.
"""

from __future__ import annotations

from functools import partial

from benchmarks import mesh
from benchmarks.procs import ProcessError, wait_http_ok
from benchmarks.scenarios.base import Scenario, ScenarioEnv, Target


def check_strict_mtls(cp: mesh.ControlPlaneProc, client: mesh.AgentProc, cluster: str) -> None:
    mode = cp.request("GET", "/api/v1/meshes/default")["spec"].get("mtls", {}).get("mode", "strict")
    handshakes = client.stats(f"cluster.{cluster}.ssl.handshake").get(f"cluster.{cluster}.ssl.handshake", 0)
    if mode != "strict" or handshakes == 0:
        raise ProcessError(
            f"meshline scenario is not mTLS (mesh mode {mode}, {handshakes} TLS handshakes to {cluster}):"
            " refusing to measure plaintext"
        )


# Strict mTLS denies by default (zero trust): callers need a permission, as a user would write.
PERMISSION = {
    "kind": "TrafficPermission",
    "mesh": "default",
    "name": "client-to-app",
    "spec": {"sources": [{"match": {"service": "client"}}], "destinations": [{"match": {"service": "app"}}],
             "action": "allow"},
}  # fmt: skip


def start(env: ScenarioEnv, mesh_spec: dict[str, object] | None = None) -> Target:
    mesh.require_meshline()
    cp = mesh.start_control_plane(env.procs, env.workdir / "cp")
    if mesh_spec:
        cp.apply({"kind": "Mesh", "name": "default", "spec": mesh_spec})
    cp.apply(PERMISSION)
    idle = mesh.IdleApp()  # the client's own app: registered, never called
    env.procs.add_cleanup(idle.close)
    app = mesh.spawn_agent(env.procs, cp, env.workdir, name="app-1", service="app", app_port=env.upstream.port)
    client = mesh.spawn_agent(
        env.procs, cp, env.workdir, name="client-1", service="client", app_port=idle.port, upstreams=["app"]
    )
    mesh.wait_ready([app, client], env.procs, timeout=60)
    port = client.outbounds["app"]
    # The client's sidecar gets app's endpoint once app's agent has seen nginx listen.
    wait_http_ok("127.0.0.1", port, env.upstream.path, timeout=60, group=env.procs)
    check_strict_mtls(cp, client, "app")
    return Target(
        url=f"http://127.0.0.1:{port}{env.upstream.path}",
        proxies={
            "agent-client": client.pid,
            "envoy-client": client.envoy_pid(),
            "agent-app": app.pid,
            "envoy-app": app.envoy_pid(),
        },
        sidecars={"client": ("agent-client", "envoy-client"), "app": ("agent-app", "envoy-app")},
        others={"control-plane": cp.pid},
    )


SCENARIO = Scenario(
    key="meshline",
    label="(b) meshline",
    description="client -> Meshline sidecar -> mTLS -> Meshline sidecar -> nginx (real control plane + agents)",
    start=start,
    requires=("envoy",),
)

# Diagnostic (run with -s meshline-nolog): the same, with the mesh's default access-log stream
# to the control plane turned off, to show what that default costs per request.
NO_ACCESS_LOG = Scenario(
    key="meshline-nolog",
    label="(b') meshline, no access log",
    description="(b) with the Mesh's logging.stream off (diagnostic: the cost of the default access logs)",
    start=partial(start, mesh_spec={"mtls": {"mode": "strict"}, "logging": {"stream": False}}),
    requires=("envoy",),
    default=False,
)
