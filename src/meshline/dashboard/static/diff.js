// A line diff (longest common subsequence) of two texts: what an apply would change.

const MAX_CELLS = 4_000_000; // lines x lines; past that the texts are shown whole

/** [{op: " " | "-" | "+", line}] from a to b, or null when they are too long to compare. */
export function diffLines(a, b) {
  const x = a.split("\n");
  const y = b.split("\n");
  if (x.length * y.length > MAX_CELLS) return null;
  const n = x.length;
  const m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) {
      out.push({ op: " ", line: x[i++] });
      j++;
    } else if (i < n && (j >= m || lcs[i + 1][j] >= lcs[i][j + 1])) {
      out.push({ op: "-", line: x[i++] }); // what goes, then what comes in its place
    } else {
      out.push({ op: "+", line: y[j++] });
    }
  }
  while (out.length && out[out.length - 1].line === "" && out[out.length - 1].op === " ") out.pop();
  return out;
}
