// `meshline inspect` in a dialog: which policies shape a dataplane's traffic and why,
// the configuration versions sent and acknowledged, the last refusal (NACK).

import * as api from "./api.js";
import { h, table } from "./dom.js";
import * as fmt from "./format.js";
import { servicesOf } from "./graph.js";
import { stateBadge } from "./overview.js";

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function nackBlock(status) {
  const nack = status.lastNack;
  if (!nack) return h("p", { class: "note" }, "Envoy has not refused any configuration from this control plane.");
  const current = status.state === "rejected";
  return h("div", { class: ["nack-box", current ? "bad" : "note"] },
    h("h3", {}, current ? "Rejected: Envoy keeps running its last good configuration" : "Last refusal (since resolved)"),
    h("p", { class: "mono" }, nack.message),
    h("p", { class: "note" }, `version ${nack.version}, ${fmt.relative(nack.at)} (${fmt.isoTime(nack.at)})`));
}

function versionRows(status, rendered) {
  const types = status.types || {};
  const names = [...new Set([...Object.keys(types), ...Object.keys(rendered || {})])].sort();
  return names.map((t) => {
    const st = types[t] || {};
    const synced = st.sent && st.sent === st.acked;
    return h("tr", {},
      h("th", { scope: "row" }, t),
      h("td", { class: "mono" }, (rendered || {})[t] || "–"),
      h("td", { class: "mono" }, st.sent || "–"),
      h("td", { class: ["mono", synced ? "" : "warn"] }, st.acked || "–"),
      h("td", { class: "num" }, st.pushes ?? "–"));
  });
}

export async function show(dialog, mesh, name) {
  const body = dialog.querySelector(".dialog-body");
  dialog.querySelector("h2").textContent = `Dataplane ${name}`;
  body.replaceChildren(h("p", { class: "note" }, "Loading…"));
  if (!dialog.open) dialog.showModal();
  let data;
  try {
    data = await api.get(api.meshPath(mesh, `/dataplanes/${encodeURIComponent(name)}/inspect?config=0`));
  } catch (err) {
    body.replaceChildren(h("p", { class: "error", role: "alert" }, `Cannot inspect ${name}: ${err.message}`));
    return;
  }
  const dp = data.dataplane;
  const status = dp.status || {};
  const tags = (dp.spec.inbound || []).map((i) => Object.entries(i.tags).map(([k, v]) => `${k}=${v}`).join(" "));
  body.replaceChildren(...[
    facts([
      ["State", stateBadge(status)],
      ["Service", servicesOf(dp).join(", ")],
      ["Tags", tags.join("; ")],
      ["Address", `${dp.spec.address} (inbound ${(dp.spec.inbound || []).map((i) => `${i.port}→${i.servicePort}`).join(", ")})`],
      ["Upstreams", (dp.spec.outbound || []).map((o) => `${o.service} on ${o.address || "127.0.0.1"}:${o.port}`).join(", ") || "none"],
      ["Identity", status.certIdentity],
      ["Certificate", status.certExpiresAt && `expires ${fmt.relative(status.certExpiresAt)} (serial ${status.certSerial})`],
      ["Connected", status.connected ? `since ${fmt.relative(status.connectedAt)}` : status.disconnectedAt ? `no, since ${fmt.relative(status.disconnectedAt)}` : "no"],
    ]),
    data.renderError && h("div", { class: "nack-box bad", role: "alert" }, h("h3", {}, "The control plane cannot render this dataplane"), h("p", { class: "mono" }, data.renderError)),
    nackBlock(status),
    h("h3", {}, "Policies that apply"),
    table({
      caption: "Each policy that shaped this dataplane's configuration, where, and why it won.",
      headers: ["Kind", "Name", "Where", "Why"],
      rows: (data.policies || []).map((p) => h("tr", { "data-policy": `${p.kind}/${p.name}` },
        h("td", {}, p.kind), h("th", { scope: "row" }, p.name), h("td", {}, p.target), h("td", {}, p.reason))),
      empty: "No policy applies: the mesh defaults do.",
      className: "policies-applied",
    }),
    h("h3", {}, "Configuration versions"),
    table({
      caption: "Rendered by the control plane, sent to Envoy, acknowledged by Envoy.",
      headers: ["Type", "Rendered", "Sent", "Acknowledged", "Pushes#"],
      rows: versionRows(status, data.versions),
      empty: "Nothing rendered yet.",
      className: "versions",
    }),
  ].filter(Boolean));
}
