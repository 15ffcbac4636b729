// The dashboard's entry point: sign-in, the router (router.js: every object has a page with
// a stable address), and a refresh every 2 seconds of what the current page shows.

import * as api from "./api.js";
import { $, h } from "./dom.js";
import { DataplanePage } from "./dataplane.js";
import { ApplyPage } from "./editor.js";
import * as fmt from "./format.js";
import * as graph from "./graph.js";
import * as overview from "./overview.js";
import * as policies from "./policies.js";
import { PolicyPage } from "./policy.js";
import * as rollouts from "./rollouts.js";
import * as router from "./router.js";
import { ServicePage } from "./service.js";
import { Tap } from "./tap.js";

const REFRESH_MS = 2000;
const NARROW_PX = 640; // below this the graph is drawn top to bottom
const PAGES = { service: ServicePage, dataplane: DataplanePage, policy: PolicyPage, apply: ApplyPage };

const state = { mesh: "", meshes: [], dataplanes: [], stats: null, kinds: null, session: null };
let tap;
let timer = 0;
let lastGraph = "";
let arrived = true; // a new address (#/meshes/M/tap?service=orders starts that tap once)
let page = null; // {key, page} of the page mounted in #view-page
const graphView = { query: "", focus: "", depth: 1 };

function current() {
  const r = router.parse(location.hash);
  return { ...r, mesh: r.mesh || state.mesh };
}

function say(text, error = false) {
  const el = $("#status");
  el.hidden = !text;
  el.textContent = text;
  el.classList.toggle("error", error);
}

function showSignIn(reason) {
  tap.stop();
  document.body.classList.add("signed-out");
  $("#signin").hidden = false;
  $("#signin-reason").textContent = reason;
  for (const v of document.querySelectorAll("main > section[data-view]")) v.hidden = true;
  $("#signout").hidden = !api.token.get();
  $("#token").focus();
}

/** The section a view draws in (service, dataplane, policy, apply: the one page section). */
const sectionOf = (view) => (PAGES[view] ? "page" : view);

function showView(r) {
  $("#signin").hidden = true;
  document.body.classList.remove("signed-out");
  for (const v of document.querySelectorAll("main > section[data-view]")) v.hidden = v.dataset.view !== sectionOf(r.view);
  const tab = router.tab(r.view);
  for (const a of document.querySelectorAll("nav a[data-view]")) {
    a.href = router.href({ view: a.dataset.view, mesh: state.mesh });
    if (a.dataset.view === tab) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  $("#nav-apply").hidden = !(state.session && state.session.principal.canWrite);
  document.title = `${{ overview: `mesh ${state.mesh}`, policies: "Policies", rollouts: "Rollouts", tap: "Tap", apply: "Apply" }[r.view] || `${r.view} ${r.name}`} · Meshline`;
  if (r.view === "tap") {
    if (arrived && r.params.has("service")) {
      tap.stop();
      tap.services(serviceNames(), r.params.get("service"));
      tap.filters(r.params.get("path") || "", r.params.get("status") || "");
      tap.start();
    } else {
      tap.services(serviceNames());
    }
  } else {
    tap.stop();
  }
  arrived = false;
}

function serviceNames() {
  const names = new Set(state.dataplanes.flatMap(graph.servicesOf));
  for (const row of (state.stats && state.stats.services) || []) names.add(row.service);
  return [...names].sort();
}

/** Keep keyboard focus on the same control across a re-render. */
function keepFocus(render) {
  const key = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : "";
  render();
  if (key) {
    const again = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

async function loadMeshes(wanted) {
  const meshes = (await api.get("/api/v1/meshes")).items.map((m) => m.name);
  state.meshes = meshes;
  const pick = wanted || state.mesh || sessionStorage.getItem("meshline.mesh") || (meshes.includes("default") ? "default" : meshes[0]);
  if (wanted && !meshes.includes(wanted)) throw new api.ApiError(404, `mesh '${wanted}' does not exist on this control plane`);
  state.mesh = meshes.includes(pick) ? pick : meshes[0] || "";
  const select = $("#mesh");
  select.replaceChildren(...meshes.map((m) => h("option", { value: m }, m)));
  select.value = state.mesh;
}

async function refreshOverview() {
  const [dps, stats] = await Promise.allSettled([
    api.get(api.meshPath(state.mesh, "/dataplanes")),
    api.get(api.meshPath(state.mesh, "/stats?window=1m")),
  ]);
  if (dps.status === "rejected") throw dps.reason;
  state.dataplanes = dps.value.items;
  state.stats = stats.status === "fulfilled" ? stats.value : null;
  keepFocus(() => overview.render($("#view-overview"), state));
  drawGraph();
  return stats.status === "rejected" ? `Traffic statistics unavailable: ${stats.reason.message}` : "";
}

function drawGraph(force = false) {
  const box = $("#graph");
  const vertical = box.clientWidth > 0 && box.clientWidth < NARROW_PX;
  const full = graph.model(state.stats, state.dataplanes);
  const { model, note } = graph.view(full, graphView);
  const key = JSON.stringify([vertical, model, graphView]);
  $("#graph-note").textContent = note;
  graph.suggest($("#graph-names"), full);
  if (key === lastGraph && !force) return; // unchanged: keep the SVG (and its focus)
  lastGraph = key;
  if (!model.nodes.length) {
    box.replaceChildren(h("p", { class: "empty" }, full.nodes.length ? "No service matches."
      : "No services yet: the graph fills in as dataplanes join and traffic flows."));
    return;
  }
  const href = (name) => router.serviceHref(state.mesh, name);
  keepFocus(() => box.replaceChildren(graph.render(model, { vertical, href, focus: graphView.focus })));
}

async function refreshPolicies() {
  const loaded = await policies.load(state.mesh, state.kinds);
  keepFocus(() => policies.render($("#policies"), loaded, !$("#policies-all").checked, state.mesh));
  return "";
}

async function refreshRollouts() {
  const loaded = await rollouts.load(state.mesh);
  keepFocus(() => rollouts.render($("#rollouts"), loaded));
  return "";
}

async function refreshTap() {
  const dps = await api.get(api.meshPath(state.mesh, "/dataplanes"));
  state.dataplanes = dps.items;
  tap.services(serviceNames());
  return "";
}

async function refreshPage(r) {
  const key = router.href(r);
  if (!page || page.key !== key) {
    const root = $("#view-page");
    const ctx = { mesh: state.mesh, route: r, session: state.session, kinds: state.kinds, refresh: () => refresh() };
    page = { key, page: new PAGES[r.view](root, ctx) };
    if (r.view !== "apply") root.querySelector("h2")?.focus?.();
  }
  await page.page.refresh();
  return "";
}

let busy = false; // one refresh at a time; a request for another meanwhile runs right after
let again = false;

async function refresh() {
  clearTimeout(timer);
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  let poll = true;
  try {
    poll = await update();
  } finally {
    busy = false;
  }
  if (again) {
    again = false;
    refresh();
  } else if (poll) {
    later();
  }
}

/** The next refresh in 2 s; a hidden tab waits (and refreshes as soon as it is shown). */
function later() {
  timer = setTimeout(() => (document.hidden ? later() : refresh()), REFRESH_MS);
}

/** Load and show what the current page needs; false when polling must stop (signed out). */
async function update() {
  try {
    const wanted = router.parse(location.hash).mesh;
    if (!state.session) state.session = await api.get("/api/v1/dashboard/session");
    if (!state.meshes.length || !state.mesh || (wanted && wanted !== state.mesh)) await loadMeshes(wanted);
    state.kinds = state.kinds || (await api.get("/api/v1/kinds")).items;
    if (!state.mesh) {
      say("No mesh on this control plane yet: create one with `meshline apply -f` (kind: Mesh).");
    } else {
      const r = current();
      showView(r);
      const refresher = PAGES[r.view] ? () => refreshPage(r)
        : { overview: refreshOverview, policies: refreshPolicies, rollouts: refreshRollouts, tap: refreshTap }[r.view];
      const warning = await refresher();
      say(warning, Boolean(warning));
      $("#updated").textContent = `updated ${fmt.clock(Date.now() / 1000)}`;
    }
    $("#signout").hidden = !api.token.get();
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 401) {
      state.session = null;
      showSignIn(api.token.get() ? `The token was refused: ${err.message}` : "");
      return false; // no polling until signed in
    }
    if (err instanceof api.ApiError && err.status === 404 && !PAGES[current().view]) state.meshes = []; // the mesh went away: pick again
    say(err instanceof api.ApiError ? err.message : `Cannot reach the control plane (${err.message}); retrying.`, true);
  }
  return true;
}

function start() {
  api.takeTokenFromAddress();
  tap = new Tap($("#view-tap"), () => state.mesh);
  $("#signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    api.token.set($("#token").value);
    $("#token").value = "";
    state.meshes = [];
    state.session = null;
    page = null;
    refresh();
  });
  $("#signout").addEventListener("click", () => {
    clearTimeout(timer);
    api.token.clear();
    state.session = null;
    page = null;
    showSignIn("Signed out.");
  });
  $("#mesh").addEventListener("change", (ev) => {
    state.mesh = ev.target.value;
    sessionStorage.setItem("meshline.mesh", state.mesh);
    tap.stop();
    location.hash = router.meshHref(state.mesh); // a new address: the back button returns
  });
  $("#policies-all").addEventListener("change", () => refresh());
  const search = $("#graph-search");
  search.addEventListener("input", () => {
    graphView.query = search.value.trim();
    drawGraph();
  });
  $("#graph-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const names = graph.model(state.stats, state.dataplanes).nodes.map((n) => n.name);
    const q = search.value.trim();
    graphView.focus = names.includes(q) ? q : names.find((n) => n.includes(q)) || "";
    graphView.query = graphView.focus ? "" : q;
    drawGraph();
  });
  $("#graph-depth").addEventListener("change", (ev) => {
    graphView.depth = Number(ev.target.value);
    drawGraph();
  });
  $("#graph-clear").addEventListener("click", () => {
    Object.assign(graphView, { query: "", focus: "" });
    search.value = "";
    drawGraph();
  });
  window.addEventListener("hashchange", () => {
    if (api.takeTokenFromAddress()) {
      state.meshes = [];
      state.session = null;
    }
    arrived = true;
    refresh();
  });
  window.addEventListener("resize", () => drawGraph());
  document.addEventListener("visibilitychange", () => !document.hidden && refresh());
  refresh();
}

start();
