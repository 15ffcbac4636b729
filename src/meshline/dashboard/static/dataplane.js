// A dataplane's page (`meshline inspect dataplane` and more): its state, certificate, the
// xDS types sent and acknowledged, Envoy's last refusal in its own words, the policies that
// shaped it and why, and the Envoy configuration it runs, searchable.

import * as api from "./api.js";
import { h, table } from "./dom.js";
import * as fmt from "./format.js";
import { servicesOf } from "./graph.js";
import * as link from "./links.js";
import { stateBadge } from "./overview.js";
import * as route from "./router.js";
import { statusText } from "./tap.js";

const SHOWN = 200; // configuration resources drawn at once (the search narrows them)

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function nackBlock(status) {
  const nack = status.lastNack;
  if (!nack) return h("p", { class: "note nack-none" }, "Envoy has not refused any configuration from this control plane.");
  const current = status.state === "rejected";
  return h("div", { class: ["nack-box", current ? "bad" : "note"], "data-nack": current ? "current" : "resolved" },
    h("h3", {}, current ? "Rejected: Envoy keeps running its last good configuration" : "Last refusal (since resolved)"),
    h("p", { class: "mono nack-message" }, nack.message),
    h("p", { class: "note" }, `version ${nack.version}, ${fmt.relative(nack.at)} (${fmt.isoTime(nack.at)})`));
}

function versionRows(status, rendered) {
  const types = status.types || {};
  const names = [...new Set([...Object.keys(types), ...Object.keys(rendered || {})])].sort();
  return names.map((t) => {
    const st = types[t] || {};
    const synced = st.sent && st.sent === st.acked;
    const nacked = status.lastNack && status.state === "rejected" && st.sent && st.sent !== st.acked;
    return h("tr", { "data-type": t },
      h("th", { scope: "row" }, t),
      h("td", { class: "mono" }, (rendered || {})[t] || "–"),
      h("td", { class: "mono" }, st.sent || "–"),
      h("td", { class: ["mono", synced ? "" : "warn"] }, st.acked || "–"),
      h("td", {}, st.ackedAt ? fmt.relative(st.ackedAt) : "–"),
      h("td", { class: "num" }, st.pushes ?? "–"),
      h("td", { class: nacked ? "bad" : "" }, synced ? "in sync" : nacked ? "NACKed" : st.sent ? "waiting for ACK" : "not sent"));
  });
}

/** A resource's name (listeners, clusters, routes: name; endpoints: clusterName; secrets: name). */
const nameOf = (r) => r.name || r.clusterName || "(unnamed)";

export class DataplanePage {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.name = ctx.route.name;
    this.config = null;
    this.configVersions = "";
    this.search = h("input", { id: "config-search", type: "search", placeholder: "search names and values", spellcheck: "false",
      "aria-label": "Search the Envoy configuration", value: ctx.route.params.get("q") || "", oninput: () => this.drawConfig() });
    this.parts = { head: h("div"), facts: h("div"), versions: h("div"), policies: h("div"), config: h("div"),
      grafana: h("span"), requests: h("div") };
    root.replaceChildren(
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: route.meshHref(ctx.mesh) }, `mesh ${ctx.mesh}`), " / dataplanes"),
      h("div", { class: "page-head" }, h("h2", { id: "page-title" }, `Dataplane ${this.name}`), this.parts.grafana),
      h("section", { class: "panel" }, this.parts.facts),
      h("section", { class: "panel", "aria-labelledby": "xds-title" }, h("h3", { id: "xds-title" }, "xDS state per type"), this.parts.versions),
      h("section", { class: "panel", "aria-labelledby": "dp-policies-title" }, h("h3", { id: "dp-policies-title" }, "Policies that apply"), this.parts.policies),
      h("section", { class: "panel", "aria-labelledby": "config-title" },
        h("div", { class: "panel-head" }, h("h3", { id: "config-title" }, "Envoy configuration"),
          h("p", { class: "note" }, "What the control plane rendered for it: listeners, clusters, routes, endpoints. Open one to read it."),
          this.search),
        this.parts.config),
      h("section", { class: "panel", "aria-labelledby": "requests-title" }, h("h3", { id: "requests-title" }, "Recent requests"),
        this.parts.requests),
      h("section", { class: "panel", "aria-labelledby": "stats-title" }, h("h3", { id: "stats-title" }, "Envoy stats"),
        h("p", { class: "note" }, "Envoy's own stats stay on the workload's host: its admin endpoint is a Unix socket only the " +
          "agent's user can open, so no control plane (or browser) can read it. On that host: ",
        h("code", {}, "curl --unix-socket <work dir>/admin.sock http://envoy/stats"),
        "; the agent's /metrics serves them to Prometheus (and Grafana's dataplane dashboard)."),
        h("p", {}, h("a", { href: route.tapHref(ctx.mesh, {}) }, "Live tap"), " shows its requests as they happen.")),
    );
  }

  async refresh() {
    const enc = encodeURIComponent(this.name);
    const [data, recent] = await Promise.all([
      api.get(api.meshPath(this.ctx.mesh, `/dataplanes/${enc}/inspect?config=0`)),
      api.get(api.meshPath(this.ctx.mesh, `/dataplanes/${enc}/requests?limit=20`)).catch(() => ({ items: [] })),
    ]);
    this.drawRequests(recent.items);
    const versions = JSON.stringify(data.versions || {});
    if (this.config === null || versions !== this.configVersions) { // only when its config changed
      const full = await api.get(api.meshPath(this.ctx.mesh, `/dataplanes/${encodeURIComponent(this.name)}/inspect`));
      this.config = full.config || {};
      this.configVersions = versions;
      this.drawConfig();
    }
    this.draw(data);
  }

  draw(data) {
    const { mesh, session } = this.ctx;
    const dp = data.dataplane;
    const status = dp.status || {};
    const p = this.parts;
    p.grafana.replaceChildren(link.grafana(session, "dataplane", { mesh, dataplane: this.name }) || "");
    const tags = (dp.spec.inbound || []).map((i) => Object.entries(i.tags).map(([k, v]) => `${k}=${v}`).join(" "));
    p.facts.replaceChildren(...[
      facts([
        ["State", stateBadge(status)],
        ["Service", servicesOf(dp).map((s, i) => [i ? ", " : "", link.service(mesh, s)])],
        ["Tags", tags.join("; ")],
        ["Address", `${dp.spec.address} (inbound ${(dp.spec.inbound || []).map((i) => `${i.port}→${i.servicePort}`).join(", ")})`],
        ["Upstreams", (dp.spec.outbound || []).length
          ? dp.spec.outbound.map((o, i) => [i ? ", " : "", link.service(mesh, o.service), ` on ${o.address || "127.0.0.1"}:${o.port}`]) : "none"],
        ["Identity", status.certIdentity && h("span", { class: "mono", "data-fact": "identity" }, status.certIdentity)],
        ["Certificate", status.certExpiresAt && h("span", { "data-fact": "certificate" },
          `expires ${fmt.relative(status.certExpiresAt)} (${fmt.isoTime(status.certExpiresAt)}), serial ${status.certSerial}`
          + (status.certIssuedAt ? `, issued ${fmt.relative(status.certIssuedAt)}` : ""))],
        ["Connected", status.connected ? `since ${fmt.relative(status.connectedAt)}` : status.disconnectedAt ? `no, since ${fmt.relative(status.disconnectedAt)}` : "no"],
      ]),
      data.renderError && h("div", { class: "nack-box bad", role: "alert" }, h("h3", {}, "The control plane cannot render this dataplane"),
        h("p", { class: "mono" }, data.renderError)),
      nackBlock(status),
      (data.warnings || []).length ? h("ul", { class: "warnings" }, data.warnings.map((w) => h("li", { class: "warn" }, w))) : null,
    ].filter(Boolean));
    p.versions.replaceChildren(table({
      caption: "Per xDS type: the version the control plane rendered, sent, and Envoy acknowledged (ACK).",
      headers: ["Type", "Rendered", "Sent", "Acknowledged", "ACKed", "Pushes#", "State"],
      rows: versionRows(status, data.versions),
      empty: "Nothing rendered yet.",
      className: "versions",
    }));
    p.policies.replaceChildren(table({
      caption: "Each policy that shaped this dataplane's configuration, where, and why it won.",
      headers: ["Kind", "Name", "Where", "Why"],
      rows: (data.policies || []).map((x) => h("tr", { "data-policy": `${x.kind}/${x.name}` },
        h("td", {}, x.kind), h("th", { scope: "row" }, link.policy(mesh, x.kind, x.name)), h("td", {}, x.target), h("td", {}, x.reason))),
      empty: "No policy applies: the mesh defaults do.",
      className: "policies-applied",
    }));
  }

  drawRequests(items) {
    const { mesh } = this.ctx;
    this.parts.requests.replaceChildren(table({
      caption: "The last requests its sidecar sent, and those its callers' sidecars sent to it, newest first.",
      headers: ["Time", "From → to", "Request", "Status", "Duration#", "Why"],
      rows: items.map((r) => {
        const failed = r.failed || r.status >= 400;
        return h("tr", { class: failed ? "failed" : "", "data-direction": r.dataplane === this.name ? "out" : "in" },
          h("td", { class: "mono" }, fmt.clock(r.time)),
          h("td", {}, link.service(mesh, r.source), " → ", link.service(mesh, r.destination)),
          h("td", { class: "mono path" }, r.protocol === "tcp" ? "TCP" : `${r.method} ${r.path}`),
          h("td", { class: ["num", failed ? "bad" : ""] }, statusText(r)),
          h("td", { class: "num" }, fmt.ms(r.durationMs)),
          h("td", { class: "why" }, r.explanation || (failed ? "" : "ok")));
      }),
      empty: "No request through this sidecar among the recent ones.",
      className: "recent-requests",
    }));
  }

  drawConfig() {
    if (this.config === null) return;
    const q = this.search.value.trim().toLowerCase();
    const open = new Set([...this.parts.config.querySelectorAll("details[open]")].map((d) => d.dataset.resource));
    let shown = 0;
    let matched = 0;
    const sections = Object.entries(this.config).sort(([a], [b]) => a.localeCompare(b)).map(([type, items]) => {
      const hits = items.map((r) => ({ r, text: JSON.stringify(r, null, 2) }))
        .filter(({ text }) => !q || text.toLowerCase().includes(q));
      matched += hits.length;
      const drawn = hits.slice(0, Math.max(0, SHOWN - shown));
      shown += drawn.length;
      return h("section", { class: "config-type", "data-type": type },
        h("h4", {}, `${type} `, h("span", { class: "count" }, `(${hits.length}${q ? ` of ${items.length}` : ""})`)),
        drawn.map(({ r, text }) => {
          const key = `${type}/${nameOf(r)}`;
          return h("details", { "data-resource": key, open: open.has(key) || (q && hits.length <= 3) },
            h("summary", { class: "mono" }, nameOf(r), policiesOf(r)), h("pre", { class: "mono config" }, text));
        }));
    });
    this.parts.config.replaceChildren(
      h("p", { class: "note", id: "config-count" }, q ? `${matched} resources match “${this.search.value.trim()}”` : `${matched} resources`,
        matched > shown ? ` (first ${shown} shown)` : ""),
      ...sections);
  }
}

/** The policies a resource's metadata says produced it (routes and clusters carry them). */
function policiesOf(r) {
  const found = new Set();
  const walk = (v, depth) => {
    if (depth > 8 || !v || typeof v !== "object") return;
    const meta = v.filterMetadata && v.filterMetadata.meshline;
    if (meta && typeof meta.policies === "string") meta.policies.split(",").filter(Boolean).forEach((p) => found.add(p));
    for (const child of Object.values(v)) walk(child, depth + 1);
  };
  walk(r, 0);
  return found.size ? h("span", { class: "note" }, `  from ${[...found].join(", ")}`) : null;
}
