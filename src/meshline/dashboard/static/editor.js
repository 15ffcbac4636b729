// Safe changes: YAML written or edited in the browser, read by the control plane as
// `meshline apply -f` reads a file, checked by a dry run (the API's validation, a diff
// against what is stored, the dataplanes whose configuration would change) before anything
// is written. Problems are shown at the line of the field they name. Only tokens that may
// change resources see the editor; the API refuses the others anyway.

import * as api from "./api.js";
import { diffLines } from "./diff.js";
import { h } from "./dom.js";
import * as link from "./links.js";
import * as route from "./router.js";
import { dump, editable } from "./yaml.js";

const TEMPLATE = (mesh) => `kind: Timeout
mesh: ${mesh}
name: example
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: 5s}}
`;

/** {doc, field} a problem's path names: "document 2 (Timeout t): spec.x" or "Timeout mesh/t: spec.x". */
export function locate(path, docs) {
  let m = path.match(/^document (\d+)(?: \(.*?\))?(?:: (.*))?$/);
  if (m) return { doc: Number(m[1]) - 1, field: m[2] || "" };
  m = path.match(/^(\S+) (?:([^/\s]+)\/)?([^\s:]+)(?:: (.*))?$/);
  if (m) {
    const doc = docs.findIndex((d) => d && d.kind === m[1] && d.name === m[3]);
    if (doc >= 0) return { doc, field: m[4] || "" };
  }
  m = path.match(/^line (\d+)$/);
  if (m) return { line: Number(m[1]) };
  return { doc: -1, field: path };
}

function lineOf(where, lines) {
  if (where.line) return where.line;
  const map = lines[where.doc];
  if (!map) return 1;
  for (let f = where.field; f; f = f.replace(/(\.[^.[\]]+|\[\d+\]|^[^.[\]]+)$/, "")) {
    if (map[f]) return map[f];
  }
  return Math.min(...Object.values(map), Infinity) || 1;
}

async function current(doc, kinds, mesh) {
  const info = kinds.find((k) => k.kind === doc.kind);
  if (!info) return null;
  const enc = encodeURIComponent;
  const path = info.meshScoped ? api.meshPath(doc.mesh || mesh, `/${info.plural}/${enc(doc.name)}`) : `/api/v1/meshes/${enc(doc.name)}`;
  try {
    return await api.get(path);
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 404) return null;
    throw err;
  }
}

export class ApplyPage {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.checked = null; // {text, docs} of the last dry run that passed
    const { mesh, session } = ctx;
    if (!session || !session.principal.canWrite) {
      root.replaceChildren(h("section", { class: "panel" }, h("h2", { id: "page-title" }, "Apply YAML"),
        h("p", { class: "note", id: "read-only" }, `Signed in as ${session ? session.principal.name : "?"}, a token that may not change resources: `
          + "nothing here can be edited. Ask for an admin or mesh token (`meshline token issue --kind mesh`).")));
      return;
    }
    this.text = h("textarea", { id: "yaml", class: "mono", rows: 18, spellcheck: "false", "aria-label": "YAML documents",
      oninput: () => this.edited() });
    this.dryRun = h("button", { type: "button", id: "dry-run", onclick: () => this.check() }, "Check: validate, diff and dry run");
    this.applyButton = h("button", { type: "button", id: "apply", class: "primary", disabled: true, onclick: () => this.apply() }, "Apply");
    this.state = h("p", { class: "note", id: "apply-state", role: "status" },
      "Nothing is written until a dry run of exactly this text has passed and you select Apply.");
    this.out = h("div", { id: "apply-result" });
    root.replaceChildren(h("section", { class: "panel" },
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: route.meshHref(mesh) }, `mesh ${mesh}`), " / apply"),
      h("h2", { id: "page-title" }, "Apply YAML"),
      h("p", { class: "note" }, "One or more documents (--- between them), as for `meshline apply -f`. A document without ",
        h("code", {}, "mesh"), ` goes to mesh ${mesh}.`),
      this.text, h("div", { class: "buttons" }, this.dryRun, this.applyButton), this.state, this.out));
    this.load(ctx.route.params).catch((err) => {
      this.text.value = TEMPLATE(mesh);
      this.say(`Cannot load ${ctx.route.params.get("kind")} ${ctx.route.params.get("name")}: ${err.message}`, "error");
    });
  }

  async load(params) {
    const kind = params.get("kind");
    const name = params.get("name");
    if (!kind || !name) {
      this.text.value = TEMPLATE(this.ctx.mesh);
      return;
    }
    const res = await current({ kind, name, mesh: this.ctx.mesh }, this.ctx.kinds, this.ctx.mesh);
    this.text.value = res ? dump(editable(res)) : TEMPLATE(this.ctx.mesh);
  }

  refresh() {
    return Promise.resolve(); // nothing polls here: the page is the user's
  }

  edited() {
    if (this.checked && this.checked.text !== this.text.value) {
      this.checked = null;
      this.applyButton.disabled = true;
      this.say("Changed since the dry run: check again before applying.");
    }
  }

  say(text, cls = "note") {
    this.state.textContent = text;
    this.state.className = cls;
  }

  async parse(text) {
    const resp = await api.post("/api/v1/dashboard/yaml", { text });
    const docs = resp.documents.map((d) => {
      if (!d || typeof d !== "object" || Array.isArray(d)) return d;
      const info = this.ctx.kinds.find((k) => k.kind === d.kind);
      return info && info.meshScoped && !d.mesh ? { ...d, mesh: this.ctx.mesh } : d;
    });
    return { docs, lines: resp.lines };
  }

  async check() {
    const text = this.text.value;
    this.checked = null;
    this.applyButton.disabled = true;
    this.say("Checking…");
    this.out.replaceChildren();
    let parsed = { docs: [], lines: [] };
    try {
      parsed = await this.parse(text);
      if (!parsed.docs.length) throw new api.ApiError(422, "no document to apply");
      const before = await Promise.all(parsed.docs.map((d) => (d && d.kind && d.name ? current(d, this.ctx.kinds, this.ctx.mesh) : null)));
      const result = await api.post("/api/v1/apply?dryRun=true", { resources: parsed.docs });
      this.checked = { text, docs: parsed.docs };
      this.applyButton.disabled = false;
      this.say(`Dry run passed, nothing written yet: ${summary(result.items)} Select Apply to write it.`, "good");
      this.out.replaceChildren(this.diffs(parsed.docs, before, result.items), this.affected(result.affected || {}));
    } catch (err) {
      this.say(`Refused: nothing was written. ${err.message}`, "error");
      if (err.problems) this.out.replaceChildren(this.annotate(text, err.problems, parsed));
    }
  }

  async apply() {
    if (!this.checked || this.checked.text !== this.text.value) return;
    this.applyButton.disabled = true;
    this.say("Applying…");
    try {
      const result = await api.post("/api/v1/apply", { resources: this.checked.docs });
      const mesh = this.ctx.mesh;
      this.say(`Applied: ${result.items.map((i) => `${i.resource} ${i.result}`).join("; ")}.`, "good");
      this.out.prepend(h("ul", { id: "applied" }, result.items.map((it) => {
        const [kind, where] = it.resource.split(" ");
        const name = where.includes("/") ? where.split("/")[1] : where;
        const info = this.ctx.kinds.find((k) => k.kind === kind);
        return h("li", { "data-result": it.result }, `${it.result}: `, info && info.policy ? link.policy(mesh, kind, name) : it.resource,
          it.version ? ` (version ${it.version})` : "", (it.warnings || []).map((w) => h("div", { class: "warn" }, w)));
      })));
      this.checked = null;
    } catch (err) {
      this.say(`Refused: ${err.message}`, "error");
    }
  }

  /** The YAML with each problem under the line of the field it names. */
  annotate(text, problems, parsed) {
    const at = new Map();
    for (const p of problems) {
      const where = locate(p.path, parsed.docs);
      const line = lineOf(where, parsed.lines);
      (at.get(line) || at.set(line, []).get(line)).push({ ...p, field: where.field || "" });
    }
    const rows = text.replace(/\n$/, "").split("\n").flatMap((line, i) => [
      h("li", { class: at.has(i + 1) ? "has-problem" : "", "data-line": i + 1 }, h("code", {}, line || " ")),
      ...(at.get(i + 1) || []).map((p) => h("li", { class: "problem", role: "alert", "data-path": p.field, "data-line": i + 1 },
        `↑ line ${i + 1}${p.field ? `, ${p.field}` : ""}: ${p.message}`)),
    ]);
    return h("section", { class: "annotated-box" }, h("h3", {}, "Problems, at their lines"), h("ol", { class: "annotated mono" }, rows));
  }

  diffs(docs, before, items) {
    return h("section", { id: "diffs" }, h("h3", {}, "Diff against what is stored"), docs.map((doc, i) => {
      const was = before[i] ? dump(editable(before[i])) : "";
      const now = dump(editable(doc));
      const lines = diffLines(was, now);
      const item = items[i] || {};
      return h("div", { class: "diff-box", "data-resource": `${doc.kind}/${doc.name}`, "data-changed": String(item.changed) },
        h("p", {}, h("strong", {}, `${doc.kind} ${doc.name}`), before[i] ? (item.changed ? ": changes" : ": unchanged") : ": new"),
        h("pre", { class: "diff mono" }, (lines || [{ op: "+", line: now }]).map((d) =>
          h("span", { class: d.op === "+" ? "add" : d.op === "-" ? "del" : "same" }, `${d.op} ${d.line}\n`))));
    }));
  }

  affected(byMesh) {
    const meshes = Object.entries(byMesh);
    return h("section", { id: "affected" }, h("h3", {}, "Dataplanes whose configuration would change"),
      meshes.length ? meshes.map(([mesh, info]) => h("div", { "data-mesh": mesh },
        h("p", { class: "note" }, info.note || `mesh ${mesh}: ${info.dataplanes.length} of ${info.rendered} dataplanes would get a new configuration.`),
        h("ul", {}, info.dataplanes.map((d) => h("li", { "data-dataplane": d.name }, link.dataplane(mesh, d.name),
          d.renderError ? h("span", { class: "bad" }, ` would not render: ${d.renderError}`) : ` ${d.types.join(", ")}`,
          d.gained.map((g) => h("div", { class: "good" }, `+ ${g.kind}/${g.name} on ${g.target}`)),
          d.lost.map((g) => h("div", { class: "bad" }, `− ${g.kind}/${g.name} on ${g.target}`)))))))
        : h("p", { class: "note" }, "None: every document is as stored."));
  }
}

function summary(items) {
  const created = items.filter((i) => i.result === "created").length;
  const unchanged = items.filter((i) => i.changed === false).length;
  return `${created} new, ${items.length - created - unchanged} changed, ${unchanged} unchanged.`;
}
