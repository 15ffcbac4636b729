// Links between pages, and the Grafana dashboard matching a page (when one is configured).

import { h } from "./dom.js";
import * as route from "./router.js";

export const service = (mesh, name) => h("a", { href: route.serviceHref(mesh, name), "data-link": "service" }, name);
export const dataplane = (mesh, name) => h("a", { href: route.dataplaneHref(mesh, name), "data-link": "dataplane" }, name);
export const policy = (mesh, kind, name) =>
  h("a", { href: route.policyHref(mesh, kind, name), "data-link": "policy" }, name);

/** "Open in Grafana" for a page, or nothing without MESHLINE_GRAFANA_URL. */
export function grafana(session, page, vars) {
  const g = session && session.grafana;
  if (!g || !g.dashboards[page]) return null;
  const q = new URLSearchParams(Object.entries(vars).map(([k, v]) => [`var-${k}`, v]));
  return h("a", { class: "grafana", href: `${g.url}/d/${encodeURIComponent(g.dashboards[page])}?${q}`,
    target: "_blank", rel: "noopener noreferrer" }, "Open in Grafana ↗");
}
