// Building the page from data without innerHTML: every value becomes a text node, so
// nothing the API returns (names, paths, NACK messages) can turn into markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class" && Array.isArray(value)) el.setAttribute("class", value.filter(Boolean).join(" "));
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h("td", {class: "num"}, "12.3"). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as h(). */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** A table with a caption, header cells with scope and one row per item (headers ending in # are numbers). */
export function table({ caption, headers, rows, empty, className }) {
  // a header ending in "#" is numeric: right-aligned like its cells
  const th = (t) => h("th", { scope: "col", class: t.endsWith("#") ? "num" : null }, t.replace(/#$/, ""));
  const head = h("thead", {}, h("tr", {}, headers.map(th)));
  const body = h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, empty)));
  // The caption is read from the table by screen readers and shown above the scrolling box,
  // where narrow screens do not cut it off.
  return h("div", { class: "table" },
    caption && h("p", { class: "note caption", "aria-hidden": "true" }, caption),
    h("div", { class: "scroll" },
      h("table", { class: className }, caption && h("caption", { class: "visually-hidden" }, caption), head, body)));
}
