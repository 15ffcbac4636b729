// Rollouts: each one's timeline (steps, the current one marked, history), its weights, its
// checks with the measured values and verdicts, and both versions' signals side by side.

import * as api from "./api.js";
import { h, table } from "./dom.js";
import * as fmt from "./format.js";

const FINAL = new Set(["promoted", "rolledBack", "aborted"]);
const PHASE_CLASS = { promoted: "good", rolledBack: "bad", aborted: "bad", paused: "warn", waiting: "warn" };

/** Every rollout of the mesh with its status (the state every replica reads from the store). */
export async function load(mesh) {
  const list = await api.get(api.meshPath(mesh, "/rollouts"));
  return Promise.all(list.items.map((r) => api.get(api.meshPath(mesh, `/rollouts/${encodeURIComponent(r.name)}/status`))));
}

function value(metric, v) {
  if (v === null || v === undefined) return "–";
  return metric === "successRate" ? `${v.toFixed(2)}%` : fmt.ms(v);
}

function timeline(state) {
  const done = (i) => i < state.stage || state.phase === "promoted";
  return h("ol", { class: "timeline" }, (state.stages || []).map((desc, i) => {
    const current = i === state.stage && !FINAL.has(state.phase);
    return h("li", { class: current ? "current" : done(i) ? "done" : null, "aria-current": current ? "step" : null },
      desc);
  }), h("li", { class: state.phase === "promoted" ? "done" : null }, "100% (promoted)"));
}

function signals(sig) {
  const row = (side) => {
    const s = sig[side];
    if (!s) return h("tr", {}, h("th", { scope: "row" }, side), h("td", { colspan: 5, class: "empty" }, "no signals here"));
    return h("tr", {}, h("th", { scope: "row" }, `${side} (${s.version})`), h("td", { class: "num" }, s.requests),
      h("td", { class: "num" }, s.failures), h("td", { class: "num" }, value("successRate", s.successRate)),
      h("td", { class: "num" }, fmt.ms(s.p50)), h("td", { class: "num" }, fmt.ms(s.p99)));
  };
  return table({ caption: `Both versions over the last ${sig.windowSeconds}s`,
    headers: ["Version", "Requests#", "Failures#", "Success#", "P50#", "P99#"], rows: [row("stable"), row("candidate")] });
}

function one(data) {
  const r = data.rollout;
  const state = data.state || { phase: "starting", stages: [], checks: [], history: [] };
  const w = state.weights || { stable: 100, candidate: 0 };
  const checks = (state.checks || []).map((c) => h("tr", {},
    h("th", { scope: "row" }, c.metric), h("td", { class: "num" }, `${c.window}s`),
    h("td", { class: "num" }, value(c.metric, c.candidate)), h("td", { class: "num" }, value(c.metric, c.stable)),
    h("td", { class: "num" }, `${c.candidateRequests} / ${c.stableRequests}`),
    h("td", { class: c.verdict === "pass" ? "good" : c.verdict === "fail" ? "bad" : "warn" }, c.verdict)));
  const start = state.started || 0;
  const history = (state.history || []).slice(-10).reverse().map((e) => h("tr", {},
    h("td", { class: "num mono" }, `+${(e.at - start).toFixed(1)}s`), h("td", { class: "num" }, e.stage + 1),
    h("td", {}, e.times ? `${e.event} ×${e.times}` : e.event), h("td", { class: "mono" }, e.detail)));
  return h("section", { class: "rollout", "data-rollout": r.name, "aria-labelledby": `rollout-${r.name}` },
    h("h3", { id: `rollout-${r.name}` }, `${r.name} `, h("span", { class: "mono" },
      `${r.spec.service}: ${r.spec.stable.version} → ${r.spec.candidate.version} `),
      h("span", { class: ["phase", PHASE_CLASS[state.phase]], "data-phase": state.phase }, state.phase)),
    state.reason ? h("p", { class: "note" }, state.reason) : null,
    h("p", { class: "weights" }, `stable ${w.stable}% · candidate ${w.candidate}%`,
      w.mirror ? ` · mirror ${w.mirror}%` : "", w.ab ? " · A/B: marked requests to the candidate" : "",
      w.testers ? " · testers pinned to the candidate" : ""),
    timeline(state),
    table({ caption: "Checks (last analysis)", headers: ["Check", "Window#", "Candidate#", "Stable#", "Requests#", "Verdict"],
      rows: checks, empty: "No analysis yet." }),
    signals(data.signals || {}),
    table({ caption: "History (newest first)", headers: ["At#", "Step#", "Event", "Detail"], rows: history,
      empty: "Nothing yet." }));
}

export function render(root, loaded) {
  root.replaceChildren(...(loaded.length ? loaded.map(one) : [h("p", { class: "empty" },
    "No rollouts in this mesh. Release a new version with a Rollout: see docs/rollouts.md.")]));
}
