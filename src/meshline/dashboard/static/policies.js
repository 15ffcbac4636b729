// Policies by kind, with what they select (sources -> destinations) and the columns each
// kind's `meshline get` shows.

import * as api from "./api.js";
import { h, table } from "./dom.js";
import * as link from "./links.js";

function selectors(list) {
  if (!list || !list.length) return "any";
  return list.map((sel) => {
    const m = Object.entries(sel.match || {}).sort(([a], [b]) => a.localeCompare(b));
    return m.length ? m.map(([k, v]) => `${k}=${v}`).join(",") : "*";
  }).join(" or ");
}

/** Every policy kind's items in this mesh: [{kind, items}] in the API's kind order. */
export async function load(mesh, kinds) {
  const policyKinds = kinds.filter((k) => k.policy && k.meshScoped);
  const lists = await Promise.all(policyKinds.map((k) => api.get(api.meshPath(mesh, `/${k.plural}`))));
  return policyKinds.map((k, i) => ({ kind: k, items: lists[i].items }));
}

// A kind's own `meshline get` columns that repeat the selectors shown here anyway.
const SELECTOR_COLUMNS = new Set(["SOURCES", "DESTINATIONS", "FROM", "TO"]);

export function render(root, loaded, onlyUsed, mesh) {
  const sections = loaded.filter((l) => l.items.length || !onlyUsed).map(({ kind: k, items }) => {
    const kind = { ...k, columns: k.columns.filter((c) => !SELECTOR_COLUMNS.has(c)) };
    const headers = ["Name", "Sources", "Destinations", ...kind.columns.map((c) => c.toLowerCase().replace(/(^|-)\w/g, (x) => x.toUpperCase()))];
    const rows = items.map((it) => h("tr", { "data-policy": `${kind.kind}/${it.name}` },
      h("th", { scope: "row" }, link.policy(mesh, kind.kind, it.name)),
      h("td", { class: "mono" }, selectors(it.spec.sources)),
      h("td", { class: "mono" }, selectors(it.spec.destinations)),
      kind.columns.map((c) => h("td", {}, String((it.columns || {})[c] ?? "–")))));
    return h("section", { class: "policy-kind", "aria-labelledby": `kind-${kind.plural}` },
      h("h3", { id: `kind-${kind.plural}` }, `${kind.kind} `, h("span", { class: "count" }, `(${items.length})`)),
      h("p", { class: "note" }, kind.summary),
      table({ headers, rows, empty: `No ${kind.kind} policies.`, className: "policies" }));
  });
  root.replaceChildren(...(sections.length ? sections : [h("p", { class: "empty" },
    "No policies in this mesh: the mesh defaults apply. Apply one with `meshline apply -f`.")]));
}
