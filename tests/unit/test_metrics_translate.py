"""The agent's translation of Envoy's Prometheus output into meshline_* series."""

from __future__ import annotations

from meshline.agent.metrics import (
    HTTP_LABELS,
    Workload,
    app_metrics,
    code_class,
    parse,
    render,
    service_of_identity,
    translate,
)

WORKLOAD = Workload(
    mesh="default", service="web", tags={"version": "v9", "zone": "z1"}, inbound_port=18080,
    upstreams={15001: "orders", 15002: "db"},
)

SOURCE = 'reporter="source",mesh="default",source_service="web",source_version="v9",source_zone="z1",' \
         'destination_service="orders",protocol="http"'
# What Envoy 1.40 prints for the render step's stats logger (trimmed), plus raw stats.
ENVOY = f"""# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{{envoy_cluster_name="orders"}} 12
# TYPE envoy_meshline_requests counter
envoy_meshline_requests{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200"}} 9
envoy_meshline_requests{{{SOURCE},destination_version="v2",destination_zone="",response_code="503"}} 2
envoy_meshline_requests{{{SOURCE},destination_version="",destination_zone="",response_code="503"}} 1
envoy_meshline_requests{{reporter="destination",mesh="default",destination_service="web",destination_version="v9",\
destination_zone="z1",protocol="http",source_service="spiffe://meshline.local/default/gateway",response_code="0"}} 4
envoy_meshline_requests{{reporter="destination",mesh="default",destination_service="web",destination_version="v9",\
destination_zone="z1",protocol="http",source_service="-",response_code="404"}} 1
# TYPE envoy_meshline_request_duration histogram
envoy_meshline_request_duration_bucket{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200",le="99999"}} 2
envoy_meshline_request_duration_bucket{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200",le="199999"}} 3
envoy_meshline_request_duration_bucket{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200",le="499999"}} 9
envoy_meshline_request_duration_bucket{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200",le="+Inf"}} 9
envoy_meshline_request_duration_sum{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200"}} 2250500
envoy_meshline_request_duration_count{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200"}} 9
# TYPE envoy_meshline_response_bytes histogram
envoy_meshline_response_bytes_bucket{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200",le="999"}} 9
envoy_meshline_response_bytes_bucket{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200",le="+Inf"}} 9
envoy_meshline_response_bytes_sum{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200"}} 2835
envoy_meshline_response_bytes_count{{{SOURCE},destination_version="v1",destination_zone="z1",response_code="200"}} 9
# TYPE envoy_tcp_downstream_cx_total counter
envoy_tcp_downstream_cx_total{{envoy_tcp_prefix="outbound_15002"}} 3
envoy_tcp_downstream_cx_total{{envoy_tcp_prefix="inbound_18080"}} 0
envoy_tcp_downstream_cx_total{{envoy_tcp_prefix="somebody_else"}} 7
# TYPE envoy_tcp_downstream_cx_rx_bytes_total counter
envoy_tcp_downstream_cx_rx_bytes_total{{envoy_tcp_prefix="outbound_15002"}} 153
# TYPE envoy_tcp_downstream_cx_tx_bytes_total counter
envoy_tcp_downstream_cx_tx_bytes_total{{envoy_tcp_prefix="outbound_15002"}} 168
# TYPE envoy_listener_downstream_cx_destroy counter
envoy_listener_downstream_cx_destroy{{envoy_listener_address="127.0.0.1_15002"}} 2
envoy_listener_downstream_cx_destroy{{envoy_listener_address="127.0.0.1_15001"}} 40
# TYPE envoy_server_live gauge
envoy_server_live{{}} 1
"""


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in parse(text).values()
        for s in fam.samples
    }


def find(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in series(text).items() if n == name and labels.items() <= dict(ls).items())


def test_requests_become_meshline_requests_total_with_every_label() -> None:
    out = render(translate(parse(ENVOY), WORKLOAD))
    samples = parse(out)["meshline_requests_total"].samples
    assert parse(out)["meshline_requests_total"].type == "counter"
    assert all(tuple(s.labels) == HTTP_LABELS for s in samples)  # one label set for every series
    assert find(out, "meshline_requests_total", reporter="source", destination_service="orders") == 12
    assert find(out, "meshline_requests_total", destination_version="v1", response_code="200",
                response_code_class="2xx", source_service="web", source_version="v9", source_zone="z1") == 9
    # a request no instance answered (no endpoint, so no version) is still counted, as a 5xx
    assert find(out, "meshline_requests_total", reporter="source", destination_version="", response_code_class="5xx") == 1
    assert find(out, "meshline_requests_total", reporter="source", response_code_class="5xx") == 3


def test_destination_side_names_the_caller_by_its_certificate() -> None:
    out = render(translate(parse(ENVOY), WORKLOAD))
    assert find(out, "meshline_requests_total", reporter="destination", source_service="gateway") == 4
    # no client certificate ('-'): caller unknown; code 0 (no response) has no class
    assert find(out, "meshline_requests_total", reporter="destination", source_service="", response_code="404") == 1
    assert find(out, "meshline_requests_total", response_code="0", response_code_class="") == 4


def test_durations_are_converted_to_seconds() -> None:
    out = render(translate(parse(ENVOY), WORKLOAD))
    fam = parse(out)["meshline_request_duration_seconds"]
    assert fam.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 2, "0.2": 3, "0.5": 9, "+Inf": 9}
    assert find(out, "meshline_request_duration_seconds_sum") == 2.2505
    assert find(out, "meshline_request_duration_seconds_count") == 9
    # sizes stay in bytes
    assert find(out, "meshline_response_bytes_sum") == 2835
    assert {s.labels["le"] for s in parse(out)["meshline_response_bytes"].samples if "le" in s.labels} == {"1000", "+Inf"}


def test_tcp_listeners_are_labelled_from_the_agents_own_config() -> None:
    out = render(translate(parse(ENVOY), WORKLOAD))
    edge = {"reporter": "source", "source_service": "web", "source_version": "v9", "destination_service": "db",
            "protocol": "tcp"}
    assert find(out, "meshline_tcp_connections_opened_total", **edge) == 3
    assert find(out, "meshline_tcp_received_bytes_total", **edge) == 153
    assert find(out, "meshline_tcp_sent_bytes_total", **edge) == 168
    assert find(out, "meshline_tcp_connections_closed_total", **edge) == 2
    # the HTTP listener's closed connections are not TCP-service connections; unknown prefixes are ignored
    assert find(out, "meshline_tcp_connections_closed_total") == 2
    assert find(out, "meshline_tcp_connections_opened_total", destination_service="web", reporter="destination",
                destination_version="v9") == 0
    assert find(out, "meshline_tcp_connections_opened_total") == 3


def test_raw_envoy_stats_pass_through_and_the_translated_ones_do_not() -> None:
    out = render(translate(parse(ENVOY), WORKLOAD))
    assert find(out, "envoy_cluster_upstream_rq_total", envoy_cluster_name="orders") == 12
    assert find(out, "envoy_server_live") == 1
    assert "envoy_meshline_" not in out
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in out


def test_series_that_translate_to_the_same_labels_are_added_up() -> None:
    twice = ENVOY.replace('source_service="-"', 'source_service=""') + (
        'envoy_meshline_requests{reporter="destination",mesh="default",destination_service="web",'
        'destination_version="v9",destination_zone="z1",protocol="http",response_code="404"}} 2\n'
    ).replace("}}", "}")
    out = render(translate(parse(twice), WORKLOAD))
    assert find(out, "meshline_requests_total", reporter="destination", response_code="404") == 3
    assert len([s for s in parse(out)["meshline_requests_total"].samples if s.labels["response_code"] == "404"]) == 1


def test_parser_reads_escapes_and_timestamps() -> None:
    fams = parse('# TYPE x counter\nx{a="q\\"uote",b="back\\\\slash",c="new\\nline"} 3 1700000000\ny 2.5\n')
    assert fams["x"].samples[0].labels == {"a": 'q"uote', "b": "back\\slash", "c": "new\nline"}
    assert fams["x"].samples[0].value == 3 and fams["y"].samples[0].value == 2.5
    again = parse(render(fams.values()))
    assert again["x"].samples[0].labels == fams["x"].samples[0].labels


def test_helpers() -> None:
    assert service_of_identity("spiffe://meshline.local/default/orders") == "orders"
    assert service_of_identity("spiffe://td/m/a,spiffe://td/m/b") == "a,b"
    assert service_of_identity("") == "" and service_of_identity("https://example.com") == ""
    assert [code_class(c) for c in ("200", "503", "0", "", "42")] == ["2xx", "5xx", "", "", ""]


def test_app_metrics_are_merged_except_names_that_would_clash() -> None:
    app = (
        "# HELP orders_placed_total Orders placed\n# TYPE orders_placed_total counter\norders_placed_total 42\n"
        "# TYPE meshline_requests_total counter\nmeshline_requests_total 1\n"
        "envoy_server_live 0\n# EOF\n"
    )
    merged = app_metrics(app)
    assert "orders_placed_total 42" in merged and "# HELP orders_placed_total Orders placed" in merged
    assert "meshline_requests_total" not in merged and "envoy_server_live" not in merged and "EOF" not in merged
    assert app_metrics("") == ""
