"""Two sidecars across two test hosts, explicit (``--upstream``) against transparent capture.

Four test hosts (network namespaces, ``meshline.testing.netns``) and a control plane on a
fifth: ``client-e`` -> ``server-e`` in explicit mode (wrk calls 127.0.0.1:9001, the client
sidecar's outbound listener) and ``client-t`` -> ``server-t`` in transparent mode (wrk calls
the server's VIP on port 80; the kernel redirects it to the client sidecar's capture listener,
and the server host's capture takes it to Envoy's inbound). Both pairs run the same Envoy,
mTLS and an nginx origin on the server host; the rounds are interleaved in ABBA order
(explicit, transparent, transparent, explicit, ...) and each figure is the median over rounds;
each ratio is the median of the rounds' own ratios, with their spread beside it. wrk runs
inside the client host: its connections are the app's, captured in transparent mode.

Latency figures are wrk's own (closed loop, 1 connection and 16 connections): this measures the
capture path's extra cost (a NAT lookup, ``original_dst``, a filter-chain match), not tail
behaviour under overload, which the data-plane scenarios measure with the open-loop generator.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from benchmarks import tools
from benchmarks.loadgen import wrk
from benchmarks.procs import ProcessGroup

Progress = Callable[[str], None]
NGINX_CONF = """
daemon off; master_process off; worker_processes 1; error_log {dir}/error.log; pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
        uwsgi_temp_path {dir}; scgi_temp_path {dir};
        server {{ listen 0.0.0.0:8080; location / {{ return 200 "ok\\n"; }} }} }}
"""
METRICS = ("rps", "c1_p50_ms", "c16_p50_ms", "c16_p90_ms", "c16_p99_ms")


def run(procs: ProcessGroup, workdir: Path, rounds: int, seconds: float,
        progress: Progress) -> tuple[dict[str, float], dict[str, dict[str, list[float]]]]:  # fmt: skip
    """(figures, every round's samples per mode)."""
    from meshline.testing.hostmesh import HostMesh
    from meshline.testing.mesh import wait_until
    from meshline.testing.netns import TestNetwork

    nginx = tools.require("nginx")
    net = TestNetwork(workdir / "net")
    procs.add_cleanup(net.close)
    mesh = HostMesh(net, workdir / "mesh").start()
    mesh.apply("kind: TrafficPermission\nmesh: default\nname: all\nspec: {action: allow}\n")
    hosts = {n: net.host(n) for n in ("client-e", "server-e", "client-t", "server-t")}
    for side in ("e", "t"):
        d = workdir / f"nginx-{side}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d))
        app = [nginx, "-c", str(d / "nginx.conf"), "-p", str(d)]
        mesh.run(hosts[f"server-{side}"], f"bench-{side}", 8080, app, protocol="http", transparent=side == "t")
    progress("explicit pair up; starting the transparent client")
    explicit = mesh.run(hosts["client-e"], "client-e", 9999, [], protocol="http", transparent=False,
                        extra=["--upstream", "bench-e=9001"], wait=False)  # fmt: skip
    transparent = mesh.run(hosts["client-t"], "client-t", 9999, [], protocol="http", wait=False)
    # no app behind these two (wrk is the app): wait for Envoy, and for the capture rules
    mesh.wait_serving(explicit, "meshline:", ready="Envoy is ready")
    mesh.wait_serving(transparent, "meshline:", ready="capture rules installed")
    vip = next(s["spec"]["vip"] for s in mesh.get("services") if s["name"] == "bench-t")
    urls = {"explicit": (hosts["client-e"].ns, "http://127.0.0.1:9001/"),
            "transparent": (hosts["client-t"].ns, f"http://{vip}/")}  # fmt: skip
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in urls}
    for mode, (_, url) in urls.items():  # Envoy is up; wait for the route to the server too
        client = hosts["client-e" if mode == "explicit" else "client-t"]
        wait_until(lambda h=client, url=url: h.curl(url)[0] == 200, 60, interval=0.2,  # type: ignore[misc]
                   what=f"{url} from {client.name}")  # fmt: skip
    for ns, url in urls.values():  # warm both paths (connections, clusters)
        wrk.run_in_netns(ns, url, 1, 4)
    for r in range(rounds):
        # ABBA order: being second in a round (a warmer machine, or a busier one) favours neither mode
        order = list(urls.items()) if r % 2 == 0 else list(reversed(urls.items()))
        for mode, (ns, url) in order:
            c16 = wrk.run_in_netns(ns, url, seconds, 16)
            c1 = wrk.run_in_netns(ns, url, max(1.0, seconds / 2), 1)
            if c16.non_2xx or c16.socket_errors:
                raise RuntimeError(f"{mode}: {c16.non_2xx} non-2xx, {c16.socket_errors} socket errors")
            s = samples[mode]
            s["rps"].append(c16.rps)
            s["c1_p50_ms"].append(c1.latency_ms["p50"])
            for p in ("p50", "p90", "p99"):
                s[f"c16_{p}_ms"].append(c16.latency_ms[p])
            progress(f"  round {r + 1} {mode}: {c16.rps:,.0f} req/s, p50 {c16.latency_ms['p50']:.2f} ms (16 conns),"
                     f" {c1.latency_ms['p50']:.2f} ms (1 conn)")  # fmt: skip
    figures: dict[str, float] = {"rounds": float(rounds), "seconds": seconds}
    for mode, s in samples.items():
        for k, values in s.items():
            figures[f"{mode}.{k}"] = statistics.median(values)
    for k in METRICS:
        # the median of each round's own ratio: the two modes of a round ran back to back, so
        # what the machine's other work does to both largely cancels (a ratio of medians would not)
        pairs = [t / e for t, e in zip(samples["transparent"][k], samples["explicit"][k], strict=True) if e]
        figures[f"ratio.{k}"] = statistics.median(pairs)
        figures[f"ratio_spread.{k}"] = max(pairs) - min(pairs)
    return figures, samples
