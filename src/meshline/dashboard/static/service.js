// A service's page: its instances and their health, versions and zones, golden signals over
// time, who calls it and whom it calls, the policies that shape its traffic (and why), and
// its recent failures with their explanation.

import * as api from "./api.js";
import { lineChart } from "./chart.js";
import { h, table } from "./dom.js";
import * as fmt from "./format.js";
import { servicesOf } from "./graph.js";
import * as link from "./links.js";
import { stateBadge } from "./overview.js";
import * as route from "./router.js";
import { halvesList, requestRecords, statusText } from "./tap.js";

const INSPECT_EVERY = 5; // refreshes between reloads of the policies (they change with applies, not traffic)
const INSPECTED = 5; // instances and callers whose policies are read

function tags(dp, name) {
  return [...new Set((dp.spec.inbound || []).map((i) => i.tags[name]).filter(Boolean))];
}

export class ServicePage {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.name = ctx.route.name;
    this.span = ctx.route.params.get("span") || "15m";
    this.inspected = null;
    this.refreshes = 0;
    this.halves = new Map(); // request id -> its records, for the failures opened (kept across refreshes)
    const span = h("select", { id: "series-span", "aria-label": "Time span",
      onchange: (ev) => { this.span = ev.target.value; ctx.refresh(); } },
    ["5m", "15m", "1h"].map((v) => h("option", { value: v, selected: v === this.span }, `last ${v}`)));
    this.parts = {
      facts: h("dl", { class: "cards" }),
      grafana: h("span"),
      charts: h("div", { class: "charts" }),
      versions: h("div"),
      instances: h("div"),
      edges: h("div"),
      policies: h("div"),
      failures: h("div"),
    };
    root.replaceChildren(
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: route.meshHref(ctx.mesh) }, `mesh ${ctx.mesh}`), " / services"),
      h("div", { class: "page-head" }, h("h2", { id: "page-title" }, `Service ${this.name}`),
        h("a", { href: route.tapHref(ctx.mesh, { service: this.name }) }, "Live tap"), this.parts.grafana),
      this.parts.facts,
      h("section", { class: "panel", "aria-labelledby": "signals-title" },
        h("div", { class: "panel-head" }, h("h3", { id: "signals-title" }, "Golden signals"),
          h("p", { class: "note" }, "As its callers saw it, in 10-second buckets, from the control plane's own telemetry."), span),
        this.parts.charts, this.parts.versions),
      h("section", { class: "panel", "aria-labelledby": "instances-title" }, h("h3", { id: "instances-title" }, "Instances"), this.parts.instances),
      h("section", { class: "panel", "aria-labelledby": "edges-title" }, h("h3", { id: "edges-title" }, "Calls in and out (last minute)"), this.parts.edges),
      h("section", { class: "panel", "aria-labelledby": "svc-policies-title" }, h("h3", { id: "svc-policies-title" }, "Policies that apply"), this.parts.policies),
      h("section", { class: "panel", "aria-labelledby": "failures-title" }, h("h3", { id: "failures-title" }, "Recent failures"), this.parts.failures),
    );
  }

  async refresh() {
    const { mesh } = this.ctx;
    const svc = encodeURIComponent(this.name);
    const [dps, stats, series, failures] = await Promise.all([
      api.get(api.meshPath(mesh, `/services/${svc}/dataplanes`)),
      api.get(api.meshPath(mesh, `/stats?window=1m&service=${svc}`)),
      api.get(api.meshPath(mesh, `/services/${svc}/series?span=${this.span}`)),
      api.get(api.meshPath(mesh, `/failures?service=${svc}&limit=20`)),
    ]);
    const { instances, callers } = dps;
    if (this.inspected === null || this.refreshes % INSPECT_EVERY === 0) {
      this.inspected = await this.inspect(instances, callers);
    }
    this.refreshes += 1;
    for (const [id, records] of this.halves) { // a half that had not come in yet may have now
      if (records.length < 2) this.halves.set(id, await requestRecords(mesh, id).catch(() => records));
    }
    this.draw({ instances, callers, stats, series, failures: failures.items });
  }

  async inspect(instances, callers) {
    const one = (dp) => api.get(api.meshPath(this.ctx.mesh, `/dataplanes/${encodeURIComponent(dp.name)}/inspect?config=0`))
      .then((d) => ({ dp: dp.name, policies: d.policies || [] }), () => ({ dp: dp.name, policies: [] }));
    const [own, calling] = await Promise.all([Promise.all(instances.slice(0, INSPECTED).map(one)),
      Promise.all(callers.slice(0, INSPECTED).map(one))]);
    const rows = new Map();
    const add = (p, dp, side) => {
      const key = `${p.kind}/${p.name}/${p.target}`;
      const row = rows.get(key) || { ...p, side, dataplanes: [] };
      row.dataplanes.push(dp);
      rows.set(key, row);
    };
    for (const { dp, policies } of own) for (const p of policies) add(p, dp, "its own sidecar");
    // a caller's policies on its outbound sections to this service (explicit or transparent),
    // by the section's id as the control plane resolved it, not by its label
    const callsThis = (p) => p.section && p.section.role.endsWith("outbound") && p.section.service === this.name;
    for (const { dp, policies } of calling) {
      for (const p of policies) if (callsThis(p)) add(p, dp, "its callers' sidecars");
    }
    return [...rows.values()].sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));
  }

  draw({ instances, callers, stats, series, failures }) {
    const { mesh, session } = this.ctx;
    const p = this.parts;
    const row = (stats.services || []).find((r) => r.service === this.name);
    const inSync = instances.filter((dp) => (dp.status || {}).state === "in-sync").length;
    const versions = [...new Set(instances.flatMap((dp) => tags(dp, "version")))].sort();
    const zones = [...new Set(instances.flatMap((dp) => tags(dp, "zone")))].sort();
    const card = (label, value, cls) => h("div", { class: ["card", cls] }, h("dt", {}, label), h("dd", {}, value));
    p.facts.replaceChildren(
      card("Instances in sync", `${inSync}/${instances.length}`, instances.length && inSync === instances.length ? "good" : "warn"),
      card("Versions", versions.join(", ") || "–"),
      card("Zones", zones.join(", ") || "–"),
      card("Requests/s (1m)", fmt.rps(row && row.rps)),
      card("Success (1m)", fmt.percent(row && row.successRate), row ? fmt.health(row) : ""),
      card("p99 (1m)", fmt.ms(row && row.latencyMs.p99)),
    );
    p.grafana.replaceChildren(link.grafana(session, "service", { mesh, service: this.name }) || "");
    this.drawCharts(series);
    p.instances.replaceChildren(table({
      caption: "One dataplane per instance: its version, zone, xDS state and certificate.",
      headers: ["Dataplane", "Version", "Zone", "Address", "xDS state", "Certificate expires"],
      rows: instances.map((dp) => h("tr", { "data-dataplane": dp.name, "data-state": (dp.status || {}).state || "offline" },
        h("th", { scope: "row" }, link.dataplane(mesh, dp.name)),
        h("td", {}, tags(dp, "version").join(", ") || "–"), h("td", {}, tags(dp, "zone").join(", ") || "–"),
        h("td", { class: "mono" }, `${dp.spec.address}:${(dp.spec.inbound || []).map((i) => i.port).join(",")}`),
        h("td", {}, stateBadge(dp.status), (dp.status || {}).state === "rejected" && dp.status.lastNack
          ? h("div", { class: "nack" }, dp.status.lastNack.message) : null),
        h("td", {}, fmt.relative((dp.status || {}).certExpiresAt)))),
      empty: "No dataplane serves this service: callers' requests find no instance.",
      className: "instances",
    }));
    const edgeRow = (e, other, dir) => h("tr", { "data-edge": `${e.source}>${e.destination}`, "data-direction": dir },
      h("th", { scope: "row" }, link.service(mesh, other)),
      h("td", { class: "num" }, fmt.rps(e.rps)), h("td", { class: ["num", `health-${fmt.health(e)}`] }, fmt.percent(e.successRate)),
      h("td", { class: "num" }, String(e.denied || 0)), h("td", { class: "num" }, fmt.ms(e.latencyMs.p99)),
      h("td", {}, { yes: "mTLS", no: "plaintext", mixed: "mixed" }[e.mtls] || "–"));
    const edges = stats.edges || [];
    const inbound = edges.filter((e) => e.destination === this.name);
    const outbound = edges.filter((e) => e.source === this.name);
    const declared = [...new Set(callers.flatMap(servicesOf))].filter((c) => !inbound.some((e) => e.source === c));
    const headers = ["Service", "RPS#", "Success#", "Denied#", "p99#", "mTLS"];
    p.edges.replaceChildren(
      table({ caption: "Inbound: who calls it.", headers, rows: inbound.map((e) => edgeRow(e, e.source, "in")),
        empty: declared.length ? `No calls in the last minute (declared callers: ${declared.join(", ")}).` : "No calls in the last minute.",
        className: "edges-in" }),
      table({ caption: "Outbound: whom it calls.", headers, rows: outbound.map((e) => edgeRow(e, e.destination, "out")),
        empty: "No calls out in the last minute.", className: "edges-out" }),
    );
    p.policies.replaceChildren(table({
      caption: "Read from `meshline inspect` of its instances and of its callers: where each policy applies and why it won.",
      headers: ["Kind", "Name", "Where", "Why", "On"],
      rows: (this.inspected || []).map((x) => h("tr", { "data-policy": `${x.kind}/${x.name}` },
        h("td", {}, x.kind), h("th", { scope: "row" }, link.policy(mesh, x.kind, x.name)), h("td", {}, x.target),
        h("td", {}, x.reason), h("td", {}, `${x.side}: `, x.dataplanes.map((d, i) => [i ? ", " : "", link.dataplane(mesh, d)])))),
      empty: "No policy applies: the mesh defaults do.",
      className: "policies-applied",
    }));
    p.failures.replaceChildren(table({
      caption: "The last failed requests to or from it (5xx, 4xx, no response), newest first, each with why.",
      headers: ["Time", "From → to", "Request", "Status", "Why"],
      rows: failures.map((r) => h("tr", { class: "failed", "data-request-id": r.requestId || "" },
        h("td", { class: "mono" }, fmt.clock(r.time)),
        h("td", {}, link.service(mesh, r.source), " → ", link.service(mesh, r.destination),
          r.destinationInstance ? [" (", link.dataplane(mesh, r.destinationInstance), ")"] : ""),
        h("td", { class: "mono path" }, r.protocol === "tcp" ? "TCP" : `${r.method} ${r.path}`),
        h("td", { class: "num bad" }, statusText(r)),
        h("td", { class: "why" }, h("strong", { class: "explanation" }, r.explanation || ""),
          this.halves.has(r.requestId) ? halvesList(mesh, this.halves.get(r.requestId))
            : r.requestId && h("button", { type: "button", class: "link small", onclick: () => this.open(r.requestId) }, "both halves")))),
      empty: "No failed request among the recent ones.",
      className: "failures",
    }));
  }

  async open(id) {
    this.halves.set(id, await requestRecords(this.ctx.mesh, id).catch(() => []));
    this.ctx.refresh();
  }

  drawCharts(series) {
    const points = series.service || [];
    if (!points.length) {
      this.parts.charts.replaceChildren(h("p", { class: "empty" }, "No requests yet."));
      return;
    }
    const from = points[0].t;
    const to = points[points.length - 1].t;
    const pts = (list, field) => list.map((p) => ({ t: p.t, v: p.requests ? p[field] : field === "rps" ? 0 : null, requests: p.requests }));
    const versions = Object.entries(series.versions || {});
    const rpsLines = [{ name: "all", cls: "s-all", points: pts(points, "rps") }];
    if (versions.length > 1) versions.forEach(([v, list], i) => rpsLines.push({ name: v, cls: `s-${i % 4}`, points: pts(list, "rps") }));
    const box = (title, chart, legend) => h("figure", { class: "chart-box" }, h("figcaption", {}, title), chart,
      legend && h("ul", { class: "legend" }, legend.map(([name, cls]) => h("li", {}, h("span", { class: ["swatch", cls] }), name))));
    this.parts.charts.replaceChildren(
      box("Requests/s", lineChart({ title: "Requests per second", kind: "rps", lines: rpsLines, format: fmt.rps, from, to }),
        rpsLines.length > 1 ? rpsLines.map((l) => [l.name, l.cls]) : null),
      box("Success rate", lineChart({ title: "Success rate", kind: "success", lines: [{ name: "success", cls: "s-all", points: pts(points, "successRate") }],
        format: fmt.percent, max: 1, from, to })),
      box("Latency", lineChart({ title: "Latency p50, p95, p99", kind: "latency", format: fmt.ms, from, to,
        lines: [["p50", "s-0"], ["p95", "s-1"], ["p99", "s-2"]].map(([q, cls]) => ({ name: q, cls, points: pts(points, q) })) }),
      [["p50", "s-0"], ["p95", "s-1"], ["p99", "s-2"]]),
    );
    const sum = (list) => list.reduce((a, p) => ({ n: a.n + p.requests, ok: a.ok + p.requests - p.failures - p.denied }), { n: 0, ok: 0 });
    this.parts.versions.replaceChildren(versions.length ? table({
      caption: `By version, over the last ${series.span}.`,
      headers: ["Version", "Requests#", "Success#"],
      rows: versions.map(([v, list]) => {
        const t = sum(list);
        return h("tr", { "data-version": v }, h("th", { scope: "row" }, v), h("td", { class: "num" }, String(t.n)),
          h("td", { class: "num" }, t.n ? fmt.percent(t.ok / t.n) : "–"));
      }),
      className: "versions",
    }) : "");
  }
}
