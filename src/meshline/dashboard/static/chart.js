// Line charts as inline SVG (no library): one chart per signal, time along x, each series a
// polyline broken where a bucket had no requests, each point a dot with a title (hover or
// focus reads its value), so the chart is also a table for tests and screen readers.

import { s } from "./dom.js";
import * as fmt from "./format.js";

const W = 560;
const H = 150;
const PAD = { left: 54, right: 10, top: 10, bottom: 24 };

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

/**
 * lines: [{name, cls, points: [{t, v}]}] (v null: no value in that bucket);
 * format: value -> label; max: fixed top of the y axis (else from the data).
 */
export function lineChart({ title, lines, format, max, from, to, kind }) {
  const values = lines.flatMap((l) => l.points.map((p) => p.v)).filter((v) => v !== null && v !== undefined);
  const top = max ?? niceMax(Math.max(0, ...values));
  const x = (t) => PAD.left + ((t - from) / Math.max(1, to - from)) * (W - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - v / top) * (H - PAD.top - PAD.bottom);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "data-chart": kind,
    "aria-label": `${title}, ${fmt.clock(from)} to ${fmt.clock(to)}` });
  const grid = s("g", { class: "grid" });
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    grid.append(s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      s("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  grid.append(s("text", { x: PAD.left, y: H - 6 }, fmt.clock(from)),
    s("text", { x: W - PAD.right, y: H - 6, "text-anchor": "end" }, fmt.clock(to)));
  svg.append(grid);
  for (const line of lines) {
    const g = s("g", { class: ["series", line.cls], "data-series": line.name });
    let run = [];
    const flush = () => {
      if (run.length > 1) g.append(s("polyline", { points: run.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" ") }));
      run = [];
    };
    for (const p of line.points) {
      if (p.v === null || p.v === undefined) {
        flush();
        continue;
      }
      run.push([x(p.t), y(p.v)]);
    }
    flush();
    for (const p of line.points) {
      if (p.v === null || p.v === undefined) continue;
      g.append(s("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.2, "data-t": p.t, "data-value": p.v,
        "data-requests": p.requests }, s("title", {}, `${line.name} ${fmt.clock(p.t)}: ${format(p.v)}`)));
    }
    svg.append(g);
  }
  return svg;
}
