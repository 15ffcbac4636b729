// A policy's page: its YAML, the dataplanes it shapes (where, and why it won there), where it
// matched but lost to a more specific policy of its kind, and for admins a way to edit it
// (the apply page, with a dry run first).

import * as api from "./api.js";
import { h, table } from "./dom.js";
import * as link from "./links.js";
import * as route from "./router.js";
import { dump, editable } from "./yaml.js";

export class PolicyPage {
  constructor(root, ctx) {
    this.ctx = ctx;
    const { mesh, route: r } = ctx;
    this.kind = r.kind;
    this.name = r.name;
    this.parts = { yaml: h("pre", { class: "mono yaml", id: "policy-yaml" }), info: h("p", { class: "note" }), targets: h("div"), lost: h("div"), edit: h("span") };
    root.replaceChildren(
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: route.meshHref(mesh) }, `mesh ${mesh}`), " / ",
        h("a", { href: route.policiesHref(mesh) }, "policies")),
      h("div", { class: "page-head" }, h("h2", { id: "page-title" }, `${this.kind} ${this.name}`), this.parts.edit),
      h("section", { class: "panel", "aria-labelledby": "yaml-title" }, h("h3", { id: "yaml-title" }, "YAML"), this.parts.info, this.parts.yaml),
      h("section", { class: "panel", "aria-labelledby": "targets-title" }, h("h3", { id: "targets-title" }, "Dataplanes it shapes"), this.parts.targets),
      h("section", { class: "panel", "aria-labelledby": "lost-title" }, h("h3", { id: "lost-title" }, "Where it lost to a more specific policy"), this.parts.lost),
    );
  }

  async refresh() {
    const { mesh, kinds, session } = this.ctx;
    const info = kinds.find((k) => k.kind === this.kind);
    if (!info) throw new api.ApiError(404, `no policy kind '${this.kind}'; known: ${kinds.filter((k) => k.policy).map((k) => k.kind).join(", ")}`);
    const enc = encodeURIComponent;
    const [res, targets, lost] = await Promise.all([
      api.get(api.meshPath(mesh, `/${info.plural}/${enc(this.name)}`)),
      api.get(api.meshPath(mesh, `/policies/${enc(this.kind)}/${enc(this.name)}/dataplanes`)),
      api.get(api.meshPath(mesh, `/policies/${enc(this.kind)}/${enc(this.name)}/outranked`)),
    ]);
    this.parts.info.textContent = `${info.summary} Version ${res.version}, changed ${res.updatedAt ? new Date(res.updatedAt * 1000).toLocaleString() : "–"}.`;
    const text = dump(editable(res));
    if (this.parts.yaml.textContent !== text) this.parts.yaml.textContent = text;
    const canWrite = session && session.principal.canWrite;
    this.parts.edit.replaceChildren(canWrite
      ? h("a", { class: "button", "data-edit": "policy", href: route.applyHref(mesh, { kind: this.kind, name: this.name }) }, "Edit") : "");
    this.parts.targets.replaceChildren(table({
      caption: "Where the last render of each dataplane applied it, and why it won there.",
      headers: ["Dataplane", "Where", "Why"],
      rows: targets.items.map((t) => h("tr", { "data-dataplane": t.dataplane },
        h("th", { scope: "row" }, link.dataplane(mesh, t.dataplane)), h("td", {}, t.target), h("td", {}, t.reason))),
      empty: "It shapes no dataplane now: nothing it selects runs, or a more specific policy of its kind wins everywhere it matches.",
      className: "policy-targets",
    }));
    this.parts.lost.replaceChildren(table({
      caption: "Sections it selects where the most specific policy of its kind applies instead.",
      headers: ["Dataplane", "Where", "It matched", "Applied instead"],
      rows: lost.items.map((t) => h("tr", { "data-dataplane": t.dataplane, "data-winner": t.winner },
        h("th", { scope: "row" }, link.dataplane(mesh, t.dataplane)), h("td", {}, t.target), h("td", {}, t.reason),
        h("td", {}, link.policy(mesh, this.kind, t.winner), ` (${t.winnerReason})`))),
      empty: "Nowhere: where it matches, it applies (or every matching policy of its kind applies).",
      className: "policy-lost",
    }));
  }
}
