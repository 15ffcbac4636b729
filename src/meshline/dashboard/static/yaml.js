// Resources as YAML for reading and editing (the API speaks JSON; JSON is also YAML, so any
// string that could read as something else is written in JSON's quotes).

// Plain (unquoted) only when YAML 1.1 (PyYAML) reads it back as the same string: no number,
// date, boolean or null look-alike ("10s" is plain, "10", "1e3", "1:20", "2026-01-01" are not).
const PLAIN = /^(?:[A-Za-z_/.][A-Za-z0-9_ ./@:+-]*|[0-9][A-Za-z0-9_./@+-]*)$/;
const SPECIAL = /^(true|false|null|yes|no|on|off|y|n|~)$/i;
const NUMERIC = /^[-+]?(?:\.?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|0x[0-9a-fA-F_]+|0o?[0-7_]+|\.inf|\.nan)$|^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}/i;

function scalar(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "string") {
    return PLAIN.test(v) && !SPECIAL.test(v) && !NUMERIC.test(v) && !v.endsWith(" ") && !v.includes(": ") && !v.includes(" #")
      ? v : JSON.stringify(v);
  }
  return String(v);
}

const isEmpty = (v) => (Array.isArray(v) ? v.length === 0 : v && typeof v === "object" && Object.keys(v).length === 0);
const isNode = (v) => v !== null && typeof v === "object" && !isEmpty(v);
const flow = (v) => (Array.isArray(v) ? "[]" : "{}");

function lines(value, indent, out) {
  const pad = " ".repeat(indent);
  if (Array.isArray(value)) {
    for (const item of value) {
      if (!isNode(item)) {
        out.push(`${pad}- ${isEmpty(item) ? flow(item) : scalar(item)}`);
        continue;
      }
      const sub = [];
      lines(item, indent + 2, sub);
      sub[0] = `${pad}- ${sub[0].slice(indent + 2)}`;
      out.push(...sub);
    }
    return out;
  }
  for (const [k, v] of Object.entries(value)) {
    const key = scalar(k);
    if (isNode(v)) {
      out.push(`${pad}${key}:`);
      lines(v, Array.isArray(v) ? indent : indent + 2, out);
    } else {
      out.push(`${pad}${key}: ${isEmpty(v) ? flow(v) : scalar(v)}`);
    }
  }
  return out;
}

/** YAML text of a JSON value (an object: one document). */
export function dump(value) {
  return isNode(value) ? lines(value, 0, []).join("\n") + "\n" : scalar(value) + "\n";
}

/** A stored resource as one would write it: kind, mesh, name, labels the user set, spec. */
export function editable(resource) {
  const out = { kind: resource.kind };
  if (resource.mesh) out.mesh = resource.mesh;
  out.name = resource.name;
  const labels = Object.fromEntries(Object.entries(resource.labels || {}).filter(([k]) => !k.startsWith("meshline.io/")));
  if (Object.keys(labels).length) out.labels = labels;
  if (resource.spec !== undefined && resource.spec !== null) out.spec = resource.spec;
  return out;
}
