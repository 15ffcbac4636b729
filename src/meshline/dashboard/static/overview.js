// The mesh at a glance: counts, the dataplanes with their xDS state, the services with
// their golden signals.

import { h, table } from "./dom.js";
import * as fmt from "./format.js";
import { servicesOf } from "./graph.js";
import * as route from "./router.js";

const STATES = {
  "in-sync": "Envoy runs the latest configuration",
  pushing: "a new configuration was sent; Envoy has not acknowledged it yet",
  rejected: "Envoy refused the latest configuration (NACK) and keeps the last good one",
  offline: "the sidecar is not connected to the control plane",
  "render-error": "the control plane could not build this dataplane's configuration",
};

export function stateBadge(status) {
  const state = (status && status.state) || "offline";
  return h("span", { class: ["badge", `state-${state}`], title: STATES[state] || state }, state);
}

function tag(dp, name) {
  const values = [...new Set((dp.spec.inbound || []).map((i) => i.tags[name]).filter(Boolean))];
  return values.length ? values.join(", ") : "–";
}

function address(dp) {
  const ports = (dp.spec.inbound || []).map((i) => i.port);
  return `${dp.spec.address}${ports.length ? ":" + ports.join(",") : ""}`;
}

function certCell(status, now) {
  const at = status && status.certExpiresAt;
  if (!at) return h("td", {}, "–");
  const left = at - now;
  const cls = left < 0 ? "bad" : left < 3600 ? "warn" : "";
  return h("td", { class: cls, title: `expires ${fmt.isoTime(at)}` }, left < 0 ? `expired ${fmt.relative(at, now)}` : fmt.relative(at, now));
}

function stateCell(dp) {
  const status = dp.status || {};
  const nack = status.lastNack;
  const rejected = status.state === "rejected" || status.state === "render-error";
  const detail = status.state === "render-error" ? status.renderError : rejected && nack ? nack.message : "";
  return h("td", { class: "state" }, stateBadge(status),
    detail && h("div", { class: "nack" }, h("span", { class: "visually-hidden" }, "reason: "), detail),
    !rejected && nack && h("div", { class: "note" }, `last NACK ${fmt.relative(nack.at)}`));
}

export function dataplaneRows(dataplanes, mesh, now = Date.now() / 1000) {
  return dataplanes.map((dp) =>
    h("tr", { "data-dataplane": dp.name, "data-state": (dp.status || {}).state || "offline" },
      h("th", { scope: "row" }, h("a", { href: route.dataplaneHref(mesh, dp.name), "data-key": `dp:${dp.name}`,
        title: `${dp.name}: its xDS state, certificate, policies and Envoy configuration` }, dp.name)),
      h("td", {}, servicesOf(dp).map((svc, i) => [i ? ", " : "", h("a", { href: route.serviceHref(mesh, svc) }, svc)])),
      h("td", {}, tag(dp, "version")),
      h("td", {}, tag(dp, "zone")),
      h("td", { class: "mono" }, address(dp)),
      stateCell(dp),
      certCell(dp.status, now),
    ),
  );
}

function signalCells(row) {
  if (!row) return [h("td", { class: "num" }, "–"), h("td", { class: "num" }, "–"), h("td", { class: "num" }, "–"),
    h("td", { class: "num" }, "–"), h("td", { class: "num" }, "–"), h("td", { class: "num" }, "–")];
  const lat = row.latencyMs || {};
  return [
    h("td", { class: "num" }, fmt.rps(row.rps)),
    h("td", { class: ["num", `health-${fmt.health(row)}`] }, fmt.percent(row.successRate)),
    // mesh denials (TrafficPermission): not successes, not the app's failures (docs/observability.md)
    h("td", { class: "num" }, String(row.denied || 0)),
    h("td", { class: "num" }, fmt.ms(lat.p50)),
    h("td", { class: "num" }, fmt.ms(lat.p95)),
    h("td", { class: "num" }, fmt.ms(lat.p99)),
  ];
}

export function serviceRows(stats, dataplanes, mesh) {
  const instances = new Map();
  for (const dp of dataplanes) {
    for (const svc of servicesOf(dp)) {
      const n = instances.get(svc) || { total: 0, ok: 0 };
      n.total += 1;
      if ((dp.status || {}).state === "in-sync") n.ok += 1;
      instances.set(svc, n);
    }
  }
  const byName = new Map(((stats && stats.services) || []).map((r) => [r.service, r]));
  const names = [...new Set([...instances.keys(), ...byName.keys()])].sort();
  return names.map((name) => {
    const n = instances.get(name);
    return h("tr", { "data-service": name },
      h("th", { scope: "row" }, h("a", { href: route.serviceHref(mesh, name), title: `${name}: its instances, charts, edges, policies and failures` }, name)),
      h("td", { class: "num" }, n ? `${n.ok}/${n.total}` : "–"),
      ...signalCells(byName.get(name)),
    );
  });
}

function card(label, value, cls) {
  return h("div", { class: ["card", cls] }, h("dt", {}, label), h("dd", {}, value));
}

export function render(root, state) {
  const dps = state.dataplanes;
  const count = (st) => dps.filter((d) => ((d.status || {}).state || "offline") === st).length;
  const rejected = count("rejected") + count("render-error");
  const services = new Set(dps.flatMap(servicesOf));
  const served = ((state.stats && state.stats.services) || []).reduce((a, r) => a + (r.rps || 0), 0);
  const window = (state.stats && state.stats.window) || "1m";
  root.querySelector("#cards").replaceChildren(
    card("Dataplanes", String(dps.length)),
    card("In sync", String(count("in-sync")), count("in-sync") === dps.length ? "good" : ""),
    card("Pushing", String(count("pushing")), count("pushing") ? "warn" : ""),
    card("Rejected", String(rejected), rejected ? "bad" : ""),
    card("Offline", String(count("offline")), count("offline") ? "warn" : ""),
    card("Services", String(services.size)),
    card(`Calls/s, all hops (${window})`, fmt.rps(served)),
  );
  root.querySelector("#dataplanes").replaceChildren(
    table({
      caption: "Dataplanes: one per workload. Select a name for its page: xDS state, certificate, policies, Envoy configuration.",
      headers: ["Name", "Service", "Version", "Zone", "Address", "xDS state", "Certificate expires"],
      rows: dataplaneRows(dps, state.mesh),
      empty: "No dataplanes in this mesh yet: start one with `meshline run` or `meshline dataplane`.",
      className: "dataplanes",
    }),
  );
  root.querySelector("#services").replaceChildren(
    table({
      caption: `Services: golden signals over the last ${window}, as the callers saw them.`,
      headers: ["Service", "Instances in sync#", "RPS#", "Success#", "Denied#", "p50#", "p95#", "p99#"],
      rows: serviceRows(state.stats, dps, state.mesh),
      empty: "No services yet.",
      className: "services",
    }),
  );
}
