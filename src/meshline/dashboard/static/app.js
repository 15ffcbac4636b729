// The dashboard's entry point: sign-in, views (#overview, #policies, #rollouts, #tap?service=&path=&status=),
// and a refresh every 2 seconds of what the current view shows.

import * as api from "./api.js";
import { $, h } from "./dom.js";
import * as fmt from "./format.js";
import * as graph from "./graph.js";
import * as inspect from "./inspect.js";
import * as overview from "./overview.js";
import * as policies from "./policies.js";
import * as rollouts from "./rollouts.js";
import { Tap } from "./tap.js";

const REFRESH_MS = 2000;
const NARROW_PX = 640; // below this the graph is drawn top to bottom

const state = { mesh: "", meshes: [], dataplanes: [], stats: null, kinds: null };
let tap;
let timer = 0;
let lastGraph = "";
let arrived = true; // a new address (#tap?service=orders starts that tap once)

function route() {
  const [view, query] = location.hash.replace(/^#/, "").split("?");
  return { view: ["overview", "policies", "rollouts", "tap"].includes(view) ? view : "overview", params: new URLSearchParams(query || "") };
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

function showView() {
  const { view, params } = route();
  $("#signin").hidden = true;
  document.body.classList.remove("signed-out");
  for (const v of document.querySelectorAll("main > section[data-view]")) v.hidden = v.dataset.view !== view;
  for (const a of document.querySelectorAll("nav a[data-view]")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (view === "tap") {
    if (arrived && params.has("service")) {
      tap.stop();
      tap.services(serviceNames(), params.get("service"));
      tap.filters(params.get("path") || "", params.get("status") || "");
      tap.start();
    } else {
      tap.services(serviceNames());
    }
  } else {
    tap.stop();
  }
  arrived = false;
  return view;
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

async function loadMeshes() {
  const meshes = (await api.get("/api/v1/meshes")).items.map((m) => m.name);
  state.meshes = meshes;
  const select = $("#mesh");
  const wanted = state.mesh || sessionStorage.getItem("meshline.mesh") || (meshes.includes("default") ? "default" : meshes[0]);
  state.mesh = meshes.includes(wanted) ? wanted : meshes[0] || "";
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
  keepFocus(() => overview.render($("#view-overview"), state, (name) => inspect.show($("#inspect"), state.mesh, name)));
  drawGraph();
  return stats.status === "rejected" ? `Traffic statistics unavailable: ${stats.reason.message}` : "";
}

function drawGraph(force = false) {
  const box = $("#graph");
  const vertical = box.clientWidth > 0 && box.clientWidth < NARROW_PX;
  const model = graph.model(state.stats, state.dataplanes);
  const key = JSON.stringify([vertical, model]);
  if (key === lastGraph && !force) return; // unchanged: keep the SVG (and its focus)
  lastGraph = key;
  if (!model.nodes.length) {
    box.replaceChildren(h("p", { class: "empty" }, "No services yet: the graph fills in as dataplanes join and traffic flows."));
    return;
  }
  keepFocus(() => box.replaceChildren(graph.render(model, { vertical })));
}

async function refreshPolicies() {
  state.kinds = state.kinds || (await api.get("/api/v1/kinds")).items;
  const loaded = await policies.load(state.mesh, state.kinds);
  keepFocus(() => policies.render($("#policies"), loaded, !$("#policies-all").checked));
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

/** Load and show what the current view needs; false when polling must stop (signed out). */
async function update() {
  try {
    if (!state.meshes.length || !state.mesh) await loadMeshes();
    if (!state.mesh) {
      say("No mesh on this control plane yet: create one with `meshline apply -f` (kind: Mesh).");
    } else {
      const view = showView();
      const warning = await { overview: refreshOverview, policies: refreshPolicies, rollouts: refreshRollouts, tap: refreshTap }[view]();
      say(warning, Boolean(warning));
      $("#updated").textContent = `updated ${fmt.clock(Date.now() / 1000)}`;
    }
    $("#signout").hidden = !api.token.get();
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 401) {
      showSignIn(api.token.get() ? `The token was refused: ${err.message}` : "");
      return false; // no polling until signed in
    }
    if (err instanceof api.ApiError && err.status === 404) state.meshes = []; // the mesh went away: pick again
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
    refresh();
  });
  $("#signout").addEventListener("click", () => {
    clearTimeout(timer);
    api.token.clear();
    showSignIn("Signed out.");
  });
  $("#mesh").addEventListener("change", (ev) => {
    state.mesh = ev.target.value;
    sessionStorage.setItem("meshline.mesh", state.mesh);
    tap.stop();
    refresh();
  });
  $("#policies-all").addEventListener("change", () => refresh());
  window.addEventListener("hashchange", () => {
    if (api.takeTokenFromAddress()) state.meshes = [];
    arrived = true;
    refresh();
  });
  window.addEventListener("resize", () => drawGraph());
  document.addEventListener("visibilitychange", () => !document.hidden && refresh());
  refresh();
}

start();
