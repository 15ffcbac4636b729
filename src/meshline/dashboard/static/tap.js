// A live tap: requests of a service as they happen (the API's JSON-lines stream), with
// each failure's plain-words explanation next to it.

import * as api from "./api.js";
import { h } from "./dom.js";
import * as fmt from "./format.js";
import * as route from "./router.js";

const KEEP = 200; // rows on screen
const REPLAY = 25; // recent requests shown when a tap starts

export function statusText(r) {
  if (r.protocol === "tcp") return r.failed ? "failed" : "ok";
  let text = r.status ? String(r.status) : "no response";
  if (r.grpcStatus) text += ` (gRPC ${r.grpcStatus})`;
  return text;
}

function row(r, mesh) {
  const failed = r.failed || r.status >= 400;
  const where = r.destinationInstance ? `${r.destination} (${r.destinationInstance})` : r.destination;
  const tr = h("tr", { class: failed ? "failed" : "", "data-request-id": r.requestId || "", "data-status": r.status },
    h("td", { class: "mono" }, fmt.clock(r.time)),
    h("td", { class: "nowrap" }, `${r.source} → ${where}`),
    h("td", { class: "mono path" }, r.protocol === "tcp" ? "TCP" : `${r.method} ${r.path}`),
    h("td", { class: ["num", failed ? "bad" : ""] }, statusText(r), r.flags && r.flags.length ? h("span", { class: "flags" }, ` ${r.flags.join(",")}`) : ""),
    h("td", { class: "num" }, fmt.ms(r.durationMs)),
    h("td", { class: "why" }, r.explanation ? h("strong", { class: "explanation" }, r.explanation) : failed ? "" : "ok",
      failed && r.requestId && h("button", { type: "button", class: "link small", onclick: (ev) => details(ev.target, mesh, r.requestId) }, "both halves")),
  );
  return tr;
}

/** Both halves of a request (the caller's and the callee's sidecar), each linked to its dataplane and policies. */
export function halvesList(mesh, records) {
  return h("ul", { class: "halves" }, records.map((r) => h("li", {},
    `${r.direction} at `, h("a", { href: route.dataplaneHref(mesh, r.dataplane) }, r.dataplane), `: ${statusText(r)}`
    + (r.flags.length ? ` [${r.flags.join(",")}]` : "")
    + (r.details ? `, ${r.details}` : "") + (r.upstreamHost ? `, to ${r.upstreamHost}` : ""),
    (r.policies || []).map((p) => {
      const [kind, name] = p.split("/");
      return [" · ", h("a", { href: route.policyHref(mesh, kind, name) }, p)];
    }))));
}

export const requestRecords = async (mesh, id) =>
  (await api.get(api.meshPath(mesh, `/requests/${encodeURIComponent(id)}`))).records;

async function details(button, mesh, id) {
  const cell = button.closest("td");
  button.remove();
  try {
    cell.append(halvesList(mesh, await requestRecords(mesh, id)));
  } catch (err) {
    cell.append(h("p", { class: "error" }, err.message));
  }
}

export class Tap {
  constructor(root, getMesh) {
    this.root = root;
    this.getMesh = getMesh;
    this.controller = null;
    this.form = root.querySelector("form");
    this.body = root.querySelector("tbody");
    this.state = root.querySelector("#tap-state");
    this.button = this.form.querySelector("button[type=submit]");
    this.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (this.controller) this.stop();
      else this.start();
    });
  }

  /** Fill the service list, keeping the selection. */
  services(names, wanted) {
    const select = this.form.elements.service;
    const current = wanted ?? select.value;
    if (current && !names.includes(current)) names = [...names, current].sort(); // not seen yet, or gone
    const options = [h("option", { value: "" }, "all services"), ...names.map((n) => h("option", { value: n }, n))];
    if (select.options.length !== options.length || [...select.options].some((o, i) => o.value !== options[i].value)) {
      select.replaceChildren(...options); // only when the list changed: an open list stays open
    }
    select.value = current;
  }

  /** Path prefix and status filter (one of the form's choices, else any). */
  filters(path, status) {
    const f = this.form.elements;
    f.path.value = path;
    f.status.value = [...f.status.options].some((o) => o.value === status) ? status : "";
  }

  get running() {
    return this.controller !== null;
  }

  async start() {
    const f = this.form.elements;
    const params = new URLSearchParams({ replay: String(REPLAY) });
    if (f.service.value) params.set("service", f.service.value);
    if (f.path.value.trim()) params.set("path", f.path.value.trim());
    if (f.status.value) params.set("status", f.status.value);
    const mesh = this.getMesh();
    const controller = (this.controller = new AbortController());
    this.body.replaceChildren();
    this.root.dataset.tap = "connecting";
    this.count = 0;
    this.failures = 0;
    this.ended = "";
    this.button.textContent = "Stop";
    this.say(`Connecting to ${f.service.value || "all services"}…`);
    try {
      await api.stream(api.meshPath(mesh, `/tap?${params}`), (item) => this.add(item, mesh), controller.signal);
      if (this.controller === controller) {
        // an idle tap is ended by the control plane with {"end": why}
        this.say(this.ended ? `The tap ended: ${this.ended}. Start it again.` : "The control plane ended the tap (it is stopping?). Start it again.");
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      this.say(`Tap failed: ${err.message}`, true);
    } finally {
      if (this.controller === controller) {
        this.root.dataset.tap = "stopped";
        this.controller = null;
        this.button.textContent = "Start";
      }
    }
  }

  stop() {
    if (!this.controller) return;
    this.controller.abort();
    this.controller = null;
    this.root.dataset.tap = "stopped";
    this.button.textContent = "Start";
    this.say(`Stopped: ${this.count} requests, ${this.failures} failed.`);
  }

  add(item, mesh) {
    if (item.end) {
      this.ended = item.end;
      return;
    }
    if (item.tap) {
      this.root.dataset.tap = "live"; // the control plane confirmed the tap
      this.say(`Tapping ${item.tap.service || "all services"} in mesh ${item.tap.mesh}: waiting for requests…`);
      return;
    }
    this.count += 1;
    if (item.failed) this.failures += 1;
    this.body.prepend(row(item, mesh));
    while (this.body.rows.length > KEEP) this.body.lastElementChild.remove();
    this.state.textContent = `Live: ${this.count} requests, ${this.failures} failed (newest first, last ${KEEP} kept).`;
  }

  say(text, error = false) {
    this.state.textContent = text;
    this.state.classList.toggle("error", error);
  }
}
