// The REST API, as the CLI uses it: JSON over fetch with `Authorization: Bearer <token>`.
// The token comes from the address (#token=..., moved to session storage at once and
// removed from the address bar and history) or from the sign-in form.

const KEY = "meshline.token";

export class ApiError extends Error {
  constructor(status, message, problems = null) {
    super(message);
    this.status = status;
    this.problems = problems; // a validation error's [{path, message}]
  }
}

export const token = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => sessionStorage.setItem(KEY, value.trim()),
  clear: () => sessionStorage.removeItem(KEY),
};

/**
 * Move a token from the address (`#token=T`, or `#tap?service=orders&token=T`) into session
 * storage and take it out of the address bar and the history entry; true if there was one.
 */
export function takeTokenFromAddress() {
  const raw = location.hash.replace(/^#/, "");
  const m = raw.match(/(^|[?&])token=([^&]*)/);
  if (!m) return false;
  const value = decodeURIComponent(m[2]);
  if (value) token.set(value);
  const rest = (raw.slice(0, m.index) + m[1] + raw.slice(m.index + m[0].length))
    .replace(/[?&]&/, (x) => x[0]).replace(/^&/, "").replace(/[?&]$/, "");
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  return true;
}

function headers(extra = {}) {
  const t = token.get();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}

async function failure(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  let problems = null;
  try {
    const body = await resp.json();
    if (body && body.message) message = body.message;
    if (body && Array.isArray(body.problems)) problems = body.problems;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(resp.status, message, problems);
}

export async function get(path, { signal } = {}) {
  const resp = await fetch(path, { headers: headers({ Accept: "application/json" }), cache: "no-store", signal });
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

export async function post(path, body) {
  const resp = await fetch(path, { method: "POST", headers: headers({ Accept: "application/json", "Content-Type": "application/json" }),
    cache: "no-store", body: JSON.stringify(body) });
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

export const meshPath = (mesh, rest = "") => `/api/v1/meshes/${encodeURIComponent(mesh)}${rest}`;

/**
 * Read a JSON-lines stream (the tap) and call onItem for each object until the signal
 * aborts or the server ends it. Blank keep-alive lines are skipped.
 */
export async function stream(path, onItem, signal) {
  const resp = await fetch(path, { headers: headers({ Accept: "application/x-ndjson" }), cache: "no-store", signal });
  if (!resp.ok) throw await failure(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) onItem(JSON.parse(line));
    }
  }
}
