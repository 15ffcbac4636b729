// Addresses: every object has a page with a stable URL in the fragment, so deep links and the
// back button work without the server knowing the page's routes (it serves one file at /).
//
//   #/meshes/M                          the mesh (overview: counts, graph, dataplanes, services)
//   #/meshes/M/services/S               a service
//   #/meshes/M/dataplanes/D             a dataplane
//   #/meshes/M/policies                 every policy of the mesh
//   #/meshes/M/policies/KIND/NAME       a policy (KIND as written in YAML: Timeout, HTTPRoute...)
//   #/meshes/M/rollouts                 the mesh's rollouts
//   #/meshes/M/apply                    apply YAML (admins)
//   #/meshes/M/tap?service=S&path=&status=
//
// The older short forms (#overview, #policies, #tap?service=S) still open their page in the
// mesh picked last.

const VIEWS = ["overview", "service", "dataplane", "policies", "policy", "rollouts", "apply", "tap"];
const SHORT = { overview: "overview", policies: "policies", rollouts: "rollouts", tap: "tap", apply: "apply" };

const enc = encodeURIComponent;

function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part; // a broken escape: show it as written rather than fail
  }
}

/** {view, mesh, name, kind, params} of a fragment ("" mesh: the one picked last). */
export function parse(hash) {
  const [path, query] = hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decode);
  if (parts[0] !== "meshes") {
    return { view: SHORT[parts[0]] || "overview", mesh: "", name: "", kind: "", params };
  }
  const mesh = parts[1] || "";
  const [section, a, b] = parts.slice(2);
  if (section === "services" && a) return { view: "service", mesh, name: a, kind: "", params };
  if (section === "dataplanes" && a) return { view: "dataplane", mesh, name: a, kind: "", params };
  if (section === "policies" && a && b) return { view: "policy", mesh, name: b, kind: a, params };
  if (section === "policies") return { view: "policies", mesh, name: "", kind: "", params };
  if (section === "rollouts") return { view: "rollouts", mesh, name: "", kind: "", params };
  if (section === "apply") return { view: "apply", mesh, name: "", kind: "", params };
  if (section === "tap") return { view: "tap", mesh, name: "", kind: "", params };
  return { view: "overview", mesh, name: "", kind: "", params };
}

export const known = (view) => VIEWS.includes(view);

const query = (params) => {
  const q = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v)).toString();
  return q ? `?${q}` : "";
};

export const meshHref = (mesh) => `#/meshes/${enc(mesh)}`;
export const serviceHref = (mesh, service) => `${meshHref(mesh)}/services/${enc(service)}`;
export const dataplaneHref = (mesh, name) => `${meshHref(mesh)}/dataplanes/${enc(name)}`;
export const policiesHref = (mesh) => `${meshHref(mesh)}/policies`;
export const policyHref = (mesh, kind, name) => `${meshHref(mesh)}/policies/${enc(kind)}/${enc(name)}`;
export const rolloutsHref = (mesh) => `${meshHref(mesh)}/rollouts`;
export const applyHref = (mesh, params) => `${meshHref(mesh)}/apply${query(params)}`;
export const tapHref = (mesh, params) => `${meshHref(mesh)}/tap${query(params)}`;

/** The address of a route (the canonical, long form). */
export function href(r) {
  switch (r.view) {
    case "service": return serviceHref(r.mesh, r.name);
    case "dataplane": return dataplaneHref(r.mesh, r.name);
    case "policy": return policyHref(r.mesh, r.kind, r.name);
    case "policies": return policiesHref(r.mesh);
    case "rollouts": return rolloutsHref(r.mesh);
    case "apply": return applyHref(r.mesh, Object.fromEntries(r.params || []));
    case "tap": return tapHref(r.mesh, Object.fromEntries(r.params || []));
    default: return meshHref(r.mesh);
  }
}

/** The nav tab a view belongs to. */
export function tab(view) {
  return { service: "overview", dataplane: "overview", policy: "policies" }[view] || view;
}
