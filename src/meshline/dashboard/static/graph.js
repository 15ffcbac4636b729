// The service graph: who talks to whom, from the telemetry edges (plus upstreams that
// dataplanes declare but nobody has called yet, dashed). A small layered layout:
// services that only call sit in the first layer, each callee one layer after its
// furthest caller; the order inside a layer follows the callers (barycenters), which
// keeps lines from crossing in the usual shapes of a mesh.

import { h, s } from "./dom.js";
import * as fmt from "./format.js";

const NODE_W = 156;
const NODE_H = 54;
const GAP_LAYER = 160; // between layers, room for the edge labels
const GAP_NODE = 34; // between nodes of one layer
const PAD = 16;

/** Nodes and edges from the API's stats and dataplanes. */
export function model(stats, dataplanes) {
  const nodes = new Map();
  const node = (name) => {
    if (!nodes.has(name)) nodes.set(name, { name, instances: 0, unhealthy: 0, stats: null });
    return nodes.get(name);
  };
  for (const dp of dataplanes) {
    for (const service of servicesOf(dp)) {
      const n = node(service);
      n.instances += 1;
      if ((dp.status || {}).state !== "in-sync") n.unhealthy += 1;
    }
  }
  for (const row of (stats && stats.services) || []) node(row.service).stats = row;
  const edges = new Map();
  for (const e of (stats && stats.edges) || []) {
    node(e.source);
    node(e.destination);
    edges.set(`${e.source}\u0000${e.destination}`, { ...e, declared: false });
  }
  for (const dp of dataplanes) {
    for (const out of dp.spec.outbound || []) {
      for (const source of servicesOf(dp)) {
        const key = `${source}\u0000${out.service}`;
        if (!edges.has(key) && out.service) {
          node(out.service);
          edges.set(key, { source, destination: out.service, declared: true, requests: 0, mtls: "unknown" });
        }
      }
    }
  }
  return { nodes: [...nodes.values()], edges: [...edges.values()] };
}

export function servicesOf(dp) {
  return [...new Set((dp.spec.inbound || []).map((i) => i.tags.service))].sort();
}

/** Layers (lists of node names, ordered) for a graph that may have cycles. */
export function layers(names, edges) {
  const out = new Map(names.map((n) => [n, []]));
  for (const e of edges) if (e.source !== e.destination) out.get(e.source).push(e.destination);
  // Depth-first from every node in name order; edges back into the current path close a
  // cycle and are left out of the layering.
  const forward = new Map(names.map((n) => [n, []]));
  const state = new Map();
  const visit = (n) => {
    state.set(n, "open");
    for (const m of [...out.get(n)].sort()) {
      if (state.get(m) === "open") continue;
      forward.get(n).push(m);
      if (!state.has(m)) visit(m);
    }
    state.set(n, "done");
  };
  const incoming = new Set(edges.filter((e) => e.source !== e.destination).map((e) => e.destination));
  for (const n of [...names].sort((a, b) => incoming.has(a) - incoming.has(b) || a.localeCompare(b))) {
    if (!state.has(n)) visit(n);
  }
  const layer = new Map(names.map((n) => [n, 0]));
  const order = topological(names, forward);
  for (const n of order) for (const m of forward.get(n)) layer.set(m, Math.max(layer.get(m), layer.get(n) + 1));
  const result = [];
  for (const n of [...names].sort()) {
    const i = layer.get(n);
    while (result.length <= i) result.push([]);
    result[i].push(n);
  }
  orderByBarycenter(result, forward);
  return result;
}

function topological(names, forward) {
  const indegree = new Map(names.map((n) => [n, 0]));
  for (const n of names) for (const m of forward.get(n)) indegree.set(m, indegree.get(m) + 1);
  const ready = names.filter((n) => indegree.get(n) === 0).sort();
  const order = [];
  while (ready.length) {
    const n = ready.shift();
    order.push(n);
    for (const m of forward.get(n)) {
      indegree.set(m, indegree.get(m) - 1);
      if (indegree.get(m) === 0) ready.push(m);
    }
  }
  return order;
}

function orderByBarycenter(result, forward) {
  const callers = new Map();
  for (const [n, ms] of forward) for (const m of ms) (callers.get(m) || callers.set(m, []).get(m)).push(n);
  const position = new Map();
  const place = () => result.forEach((layer) => layer.forEach((n, i) => position.set(n, i)));
  place();
  for (let sweep = 0; sweep < 4; sweep++) {
    const down = sweep % 2 === 0;
    const indices = down ? [...result.keys()].slice(1) : [...result.keys()].reverse().slice(1);
    for (const i of indices) {
      const neighbours = (n) => (down ? callers.get(n) || [] : forward.get(n) || []);
      const centre = (n) => {
        const ps = neighbours(n).map((m) => position.get(m));
        return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : position.get(n);
      };
      result[i].sort((a, b) => centre(a) - centre(b) || a.localeCompare(b));
      place();
    }
  }
}

/** Positions of node boxes, left to right (wide) or top to bottom (narrow screens). */
function positions(layered, vertical) {
  const widest = Math.max(1, ...layered.map((l) => l.length));
  const span = (count) => count * (vertical ? NODE_W : NODE_H) + (count - 1) * GAP_NODE;
  const total = span(widest);
  const pos = new Map();
  layered.forEach((layer, li) => {
    const offset = (total - span(layer.length)) / 2;
    layer.forEach((name, i) => {
      const along = PAD + li * ((vertical ? NODE_H : NODE_W) + GAP_LAYER);
      const across = PAD + offset + i * ((vertical ? NODE_W : NODE_H) + GAP_NODE);
      pos.set(name, vertical ? { x: across, y: along } : { x: along, y: across });
    });
  });
  const depth = PAD * 2 + layered.length * (vertical ? NODE_H : NODE_W) + (layered.length - 1) * GAP_LAYER;
  const breadth = PAD * 2 + total;
  return { pos, width: vertical ? breadth : depth, height: vertical ? depth : breadth };
}

/** The cubic curve of an edge: [start, control 1, control 2, end], each {x, y}. */
function edgeCurve(a, b, vertical, back) {
  const pt = (x, y) => ({ x, y });
  if (a === b) { // a service calling itself: a small loop over its box
    const x = a.x + NODE_W - 24;
    return [pt(x, a.y), pt(x - 10, a.y - 40), pt(x + 40, a.y - 40), pt(x + 20, a.y)];
  }
  if (vertical) {
    if (back) { // a call back up (a cycle): out of the right side and around
      const [p0, p3] = [pt(a.x + NODE_W, a.y + NODE_H / 2), pt(b.x + NODE_W, b.y + NODE_H / 2)];
      return [p0, pt(p0.x + 70, p0.y), pt(p3.x + 70, p3.y), p3];
    }
    const [p0, p3] = [pt(a.x + NODE_W / 2, a.y + NODE_H), pt(b.x + NODE_W / 2, b.y)];
    const bend = (p3.y - p0.y) / 2;
    return [p0, pt(p0.x, p0.y + bend), pt(p3.x, p3.y - bend), p3];
  }
  if (back) { // a call back to the left: under the boxes
    const [p0, p3] = [pt(a.x + NODE_W / 2, a.y + NODE_H), pt(b.x + NODE_W / 2, b.y + NODE_H)];
    return [p0, pt(p0.x, p0.y + 70), pt(p3.x, p3.y + 70), p3];
  }
  const [p0, p3] = [pt(a.x + NODE_W, a.y + NODE_H / 2), pt(b.x, b.y + NODE_H / 2)];
  const bend = (p3.x - p0.x) / 2;
  return [p0, pt(p0.x + bend, p0.y), pt(p3.x - bend, p3.y), p3];
}

function pathOf([p0, p1, p2, p3]) {
  const f = (p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`;
  return `M${f(p0)} C${f(p1)} ${f(p2)} ${f(p3)}`;
}

function pointAt([p0, p1, p2, p3], t) {
  const u = 1 - t;
  const mix = (k) => u * u * u * p0[k] + 3 * u * u * t * p1[k] + 3 * u * t * t * p2[k] + t * t * t * p3[k];
  return { x: mix("x"), y: mix("y") };
}

const overlaps = (r, q) => r.x < q.x + q.w && q.x < r.x + r.w && r.y < q.y + q.h && q.y < r.y + r.h;

/**
 * Where a label goes: beside its line (above it left to right, right of it top to bottom),
 * at the first of a few spots along the line, nudged up or down, that covers no box and
 * no label placed before it.
 */
function placeLabel(curve, w, h, vertical, taken) {
  let first = null;
  for (const t of [0.5, 0.38, 0.62, 0.27, 0.73]) {
    const p = pointAt(curve, t);
    const centre = vertical ? { x: p.x + w / 2 + 6, y: p.y } : { x: p.x, y: p.y - h / 2 - 5 };
    for (const step of [0, -1, 1, -2, 2]) {
      const box = { x: centre.x - w / 2 - 2, y: centre.y - h / 2 - 2 + step * (h + 3), w: w + 4, h: h + 4 };
      first = first || box;
      if (!taken.some((q) => overlaps(box, q))) return box;
    }
  }
  return first;
}

function mtlsText(mtls) {
  return { yes: "mTLS", no: "plaintext", mixed: "mTLS mixed" }[mtls] || "";
}

function edgeLabel(e) {
  if (e.declared) return ["no traffic yet", ""];
  const rate = e.protocol === "tcp" ? `${fmt.rps(e.rps)} conn/s` : `${fmt.rps(e.rps)} rps`;
  return [`${rate} · ${fmt.percent(e.successRate)}`, mtlsText(e.mtls)];
}

function describeEdge(e) {
  if (e.declared) return `${e.source} to ${e.destination}: declared upstream, no traffic seen yet`;
  const parts = [`${fmt.rps(e.rps)} per second`, `${fmt.percent(e.successRate)} success`];
  if (mtlsText(e.mtls)) parts.push(mtlsText(e.mtls));
  return `${e.source} to ${e.destination}: ${parts.join(", ")}`;
}

const MARKERS = ["good", "warn", "bad", "idle"];

/** Draw the graph as an SVG element. `vertical` lays it out top to bottom; `href(name)` is a node's link. */
export function render(graph, { vertical = false, href = (name) => `#tap?service=${encodeURIComponent(name)}`, focus = "" } = {}) {
  const names = graph.nodes.map((n) => n.name);
  const layered = layers(names, graph.edges);
  const layerOf = new Map();
  layered.forEach((l, i) => l.forEach((n) => layerOf.set(n, i)));
  const { pos, width, height } = positions(layered, vertical);
  const extra = 80; // room for back edges and loops drawn outside the layers
  const svg = s("svg", {
    class: "graph",
    viewBox: `0 ${-extra / 2} ${width + (vertical ? extra : 0)} ${height + extra}`,
    width: width + (vertical ? extra : 0),
    role: "group",
    "aria-label": `Service graph: ${graph.nodes.length} services, ${graph.edges.length} connections`,
  });
  svg.append(
    s("defs", {}, MARKERS.map((m) =>
      s("marker", { id: `arrow-${m}`, class: `marker-${m}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
        markerUnits: "userSpaceOnUse", markerWidth: 11, markerHeight: 11, orient: "auto-start-reverse" },
      s("path", { d: "M0,0 L10,5 L0,10 z" })),
    )),
  );
  const taken = names.map((n) => ({ x: pos.get(n).x - 4, y: pos.get(n).y - 4, w: NODE_W + 8, h: NODE_H + 8 }));
  const edgeLayer = s("g", { class: "edges", role: "list", "aria-label": "Connections" });
  const labelLayer = s("g", { class: "edge-labels", "aria-hidden": "true" });
  // the busiest edges get the best label spots
  const busiest = [...graph.edges].sort((a, b) => (b.rps || 0) - (a.rps || 0) || a.source.localeCompare(b.source)
    || a.destination.localeCompare(b.destination));
  for (const e of busiest) {
    const curve = edgeCurve(pos.get(e.source), pos.get(e.destination), vertical,
      layerOf.get(e.destination) <= layerOf.get(e.source));
    const status = e.declared ? "idle" : fmt.health(e);
    const widthPx = e.declared ? 1.5 : 1.5 + Math.min(4, Math.log10(1 + (e.rps || 0)) * 2.5);
    const cls = ["edge", `health-${status}`, e.declared && "declared", `mtls-${e.mtls || "unknown"}`];
    edgeLayer.append(
      s("g", { class: cls, role: "listitem", "data-source": e.source, "data-destination": e.destination,
        "data-mtls": e.mtls || "unknown", "aria-label": describeEdge(e) },
      s("title", {}, describeEdge(e)),
      // one click from a red arrow to the callee's page: its failures, explained, and its policies
      s("a", { href: href(e.destination), "aria-label": `${describeEdge(e)} (open ${e.destination}'s page)` },
        s("path", { d: pathOf(curve), "stroke-width": widthPx.toFixed(2), "marker-end": `url(#arrow-${status})` }))),
    );
    const [line1, line2] = edgeLabel(e);
    const w = Math.max(line1.length, line2.length) * 6.4 + 12;
    const h = line2 ? 32 : 18;
    const box = placeLabel(curve, w, h, vertical, taken);
    taken.push(box);
    const at = { x: box.x + box.w / 2, y: box.y + box.h / 2 };
    labelLayer.append(
      s("g", { class: ["edge-label", `health-${status}`], "data-source": e.source, "data-destination": e.destination,
        transform: `translate(${at.x.toFixed(1)},${at.y.toFixed(1)})` },
      s("rect", { x: -w / 2, y: -h / 2, width: w, height: h, rx: 5 }),
      s("text", { class: "rate", y: line2 ? -3 : 4, "text-anchor": "middle" }, line1),
      line2 && s("text", { class: ["tls", `mtls-${e.mtls}`], y: 11, "text-anchor": "middle" }, line2)),
    );
  }
  const nodeLayer = s("g", { class: "nodes", role: "list", "aria-label": "Services" });
  for (const n of [...graph.nodes].sort((a, b) => a.name.localeCompare(b.name))) {
    const p = pos.get(n.name);
    const status = n.unhealthy ? "bad" : fmt.health(n.stats);
    const sub = n.instances
      ? `${n.instances} instance${n.instances === 1 ? "" : "s"}${n.unhealthy ? `, ${n.unhealthy} not in sync` : ""}`
      : n.name === "external" ? "callers without a sidecar" : "no dataplane";
    const label = `${n.name}: ${sub}` + (n.stats ? `, ${fmt.rps(n.stats.rps)} requests per second in` : "");
    const link = s("a", { href: href(n.name), class: ["node", `health-${status}`, n.name === focus && "focus"],
      "data-service": n.name, role: "listitem", "aria-label": `${label} (open its page)` },
    s("title", {}, `${label}. Select for its page.`),
    s("rect", { x: p.x, y: p.y, width: NODE_W, height: NODE_H, rx: 8 }),
    s("text", { class: "name", x: p.x + NODE_W / 2, y: p.y + 22, "text-anchor": "middle" }, truncate(n.name, 20)),
    s("text", { class: "sub", x: p.x + NODE_W / 2, y: p.y + 40, "text-anchor": "middle" }, truncate(sub, 26)));
    nodeLayer.append(link);
  }
  svg.append(edgeLayer, nodeLayer, labelLayer);
  return svg;
}

function truncate(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

const MAX_DRAWN = 40; // past this many services the unfocused graph shows the busiest (and says so)

const busyness = (n, edges) => (n.stats ? n.stats.rps || 0 : 0)
  + edges.filter((e) => e.source === n.name || e.destination === n.name).reduce((a, e) => a + (e.rps || 0), 0);

/**
 * What to draw of a big graph: focused on one service, its neighbours `depth` calls away in
 * either direction; a search, the services whose names contain it (and the edges between
 * them); otherwise everything up to MAX_DRAWN services, past that the busiest. `note` says
 * what was left out.
 */
export function view(full, { query = "", focus = "", depth = 1 } = {}) {
  const keep = (names, why) => {
    const set = new Set(names);
    return {
      model: { nodes: full.nodes.filter((n) => set.has(n.name)),
        edges: full.edges.filter((e) => set.has(e.source) && set.has(e.destination)) },
      note: why,
    };
  };
  if (focus && full.nodes.some((n) => n.name === focus)) {
    const seen = new Set([focus]);
    let frontier = [focus];
    for (let d = 0; d < depth; d++) {
      const next = [];
      for (const e of full.edges) {
        for (const [a, b] of [[e.source, e.destination], [e.destination, e.source]]) {
          if (frontier.includes(a) && !seen.has(b)) {
            seen.add(b);
            next.push(b);
          }
        }
      }
      frontier = next;
    }
    return keep(seen, `Focused on ${focus}: ${seen.size - 1} services within ${depth} call${depth === 1 ? "" : "s"} of it `
      + `(of ${full.nodes.length}).`);
  }
  if (query) {
    const hits = full.nodes.filter((n) => n.name.includes(query)).map((n) => n.name);
    return keep(hits, `${hits.length} of ${full.nodes.length} services match “${query}”. Press Enter to focus on the first.`);
  }
  if (full.nodes.length <= MAX_DRAWN) return { model: full, note: "" };
  const busiest = [...full.nodes].sort((a, b) => busyness(b, full.edges) - busyness(a, full.edges) || a.name.localeCompare(b.name))
    .slice(0, MAX_DRAWN).map((n) => n.name);
  return keep(busiest, `${full.nodes.length} services: the ${MAX_DRAWN} busiest are drawn. Search or focus on a service to see the others.`);
}

/** Fill the search box's suggestions with every service name (only when they change). */
export function suggest(datalist, full) {
  const names = full.nodes.map((n) => n.name).sort();
  if (datalist.dataset.names === names.join("\n")) return;
  datalist.dataset.names = names.join("\n");
  datalist.replaceChildren(...names.map((n) => h("option", { value: n })));
}
