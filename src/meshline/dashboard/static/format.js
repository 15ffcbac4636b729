// How numbers and times read on the page (the same rounding as `meshline stat`).

export function rps(value) {
  if (value === undefined || value === null) return "–";
  if (value === 0) return "0";
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

export function percent(rate) {
  if (rate === undefined || rate === null) return "–";
  const pct = rate * 100;
  return (pct > 99 && pct < 100 ? pct.toFixed(2) : pct.toFixed(1)) + "%";
}

export function ms(value) {
  if (value === undefined || value === null) return "–";
  return value >= 10 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`;
}

/** good / warn / bad by success rate (the thresholds of `meshline stat`), idle without traffic. */
export function health(row) {
  if (!row || !row.requests || row.successRate === null || row.successRate === undefined) return "idle";
  if (row.successRate >= 0.99) return "good";
  return row.successRate >= 0.95 ? "warn" : "bad";
}

function span(seconds) {
  seconds = Math.abs(seconds);
  if (seconds < 90) return `${Math.max(1, Math.round(seconds))}s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)}m`;
  if (seconds < 2 * 86400) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86400)}d`;
}

/** "in 23h" / "5m ago" for a Unix time, relative to now. */
export function relative(ts, now = Date.now() / 1000) {
  if (!ts) return "–";
  return ts > now ? `in ${span(ts - now)}` : `${span(now - ts)} ago`;
}

export function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

export function isoTime(ts) {
  return new Date(ts * 1000).toISOString();
}
