// The %%gpumem panel, drawn in the browser (anywidget ESM).
//
// The kernel sends data, not markup: `meta` (rows and sources), live points as custom messages
// {points: {key: [t_ms[], v_kib[]]}, elapsed_ms, sources}, and once the cell has ended `final`
// (the whole timeline, downsampled, with peaks and marks) and `facts_html`. Everything is drawn
// here as SVG, in the frontend's theme (JupyterLab's CSS variables, else the page's colours).

const HEIGHT = 150;
const PAD = { left: 66, right: 14, top: 18, bottom: 22 };
const UNITS = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
const SVG = "http://www.w3.org/2000/svg";

function bytes(value) {
  if (value === null || value === undefined) return "unknown";
  for (const [unit, size] of UNITS) if (Math.abs(value) >= size) return `${(value / size).toFixed(2)} ${unit}`;
  return `${Math.round(value)} B`;
}

function seconds(t, step) {
  if (step < 0.001) return `${(t * 1000).toFixed(2)} ms`;
  if (step < 1) return t < 1 ? `${Math.round(t * 1000)} ms` : `${t.toFixed(step < 0.1 ? 2 : 1)} s`;
  return `${Math.round(t)} s`;
}

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (raw <= m * power) return m * power;
  return 10 * power;
}

function byteStep(span, count) {
  const raw = span / Math.max(count, 1);
  const unit = UNITS.find(([, size]) => raw >= size) || ["B", 1];
  return niceStep(raw / unit[1], 1) * unit[1];
}

// The points of one model live here, not in a view: a view drawn later (JupyterLab re-renders
// a cell scrolled back into sight) still gets every live point received so far. Keyed by the
// model's uid: anywidget hands each view its own proxy of the model.
const stores = new Map();

function storeOf(model) {
  const uid = model.get("uid");
  let store = stores.get(uid);
  if (!store) {
    store = { series: {}, sources: {}, elapsed: 0, hidden: new Set(), views: new Set() };
    stores.set(uid, store);
  }
  return store;
}

// A long cell's live curve stays at most LIVE_POINTS points: each group of four readings keeps
// its lowest and highest, so a redraw costs the same after an hour as after a minute.
const LIVE_POINTS = 4000;

function thin(series) {
  const t = [], v = [];
  for (let i = 0; i < series.t.length; i += 4) {
    let lo = -1, hi = -1;
    for (let j = i; j < Math.min(i + 4, series.t.length); j++) {
      if (series.v[j] === null) continue;
      if (lo < 0 || series.v[j] < series.v[lo]) lo = j;
      if (hi < 0 || series.v[j] > series.v[hi]) hi = j;
    }
    for (const k of lo < 0 ? [] : lo === hi ? [lo] : [Math.min(lo, hi), Math.max(lo, hi)]) {
      t.push(series.t[k]);
      v.push(series.v[k]);
    }
  }
  series.t = t;
  series.v = v;
}

function initialize({ model }) {
  const store = storeOf(model);
  model.on("msg:custom", (msg) => {
    if (!msg || !msg.points) return;
    Object.assign(store.sources, msg.sources || {});
    for (const [key, [t, v]] of Object.entries(msg.points)) {
      if (msg.replace || !store.series[key]) store.series[key] = { t: [], v: [] };
      const series = store.series[key];
      for (let i = 0; i < t.length; i++) {
        series.t.push(t[i] / 1000);
        series.v.push(v[i] === null ? null : v[i] * 1024);
      }
      if (series.t.length > LIVE_POINTS) thin(series);
    }
    store.elapsed = msg.elapsed_ms / 1000;
    for (const redraw of store.views) redraw();
  });
  return () => stores.delete(model.get("uid"));
}

function node(name, attrs, parent) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function html(tag, cls, parent, text) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text !== undefined) el.textContent = text;
  if (parent) parent.appendChild(el);
  return el;
}

// What to draw: the final timeline once there is one, else the live points.
function view(model, store) {
  const final = model.get("final");
  if (final && final.series) {
    const series = {};
    for (const [key, [t, v]] of Object.entries(final.series)) series[key] = { t, v };
    return { series, sources: final.sources, elapsed: final.elapsed, peaks: final.peaks || [], marks: final.marks || [], done: true };
  }
  return { series: store.series, sources: store.sources, elapsed: store.elapsed, peaks: [], marks: [], done: false };
}

function valueAt(series, t) {
  let value = null;
  for (let i = 0; i < series.t.length && series.t[i] <= t; i++) if (series.v[i] !== null) value = series.v[i];
  return value;
}

function drawRow(svg, row, keys, data, store, width, tooltip) {
  const plotW = Math.max(width - PAD.left - PAD.right, 40);
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const tMax = Math.max(data.elapsed, 1e-3);
  const visible = keys.filter((k) => !store.hidden.has(k));
  let lo = Infinity, hi = -Infinity;
  for (const key of visible) for (const v of data.series[key].v) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  // an exact peak (a counter) is often above every sample: keep its marker inside the frame
  for (const peak of data.peaks) if (visible.includes(peak.key)) { lo = Math.min(lo, peak.v); hi = Math.max(hi, peak.v); }
  if (!isFinite(lo)) { lo = 0; hi = 1; }
  // Lines worth drawing only when they are near the data: a 4 GiB limit over a 300 MiB curve
  // would flatten it. Otherwise they are named in the row's title.
  const lines = [];
  if (row.limit) lines.push(["limit", row.limit, "kmem-limit"]);
  if (row.total) lines.push(["total", row.total, "kmem-total"]);
  for (const [, value] of lines) if (value <= hi * 1.5 && value >= lo) hi = Math.max(hi, value);
  const span = Math.max(hi - lo, hi * 0.02, 2 ** 20);
  lo = Math.max(0, lo - span * 0.08);
  hi = hi + span * 0.12;
  const x = (t) => PAD.left + (plotW * t) / tMax;
  const y = (v) => PAD.top + plotH * (1 - (v - lo) / (hi - lo));
  svg.setAttribute("width", width);
  svg.setAttribute("height", HEIGHT);
  svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
  const far = lines.filter(([, v]) => !(v <= hi && v >= lo)).map(([name, v]) => `${name} ${bytes(v)}`);
  node("text", { x: PAD.left, y: 12, class: "kmem-row-title" }, svg).textContent =
    (row.title || row.name) + (far.length ? ` · ${far.join(" · ")} (off the axis)` : "");
  node("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, class: "kmem-frame" }, svg);
  const yStep = byteStep(hi - lo, 3);
  for (let v = Math.ceil(lo / yStep) * yStep; v <= hi; v += yStep) {
    node("line", { x1: PAD.left, x2: PAD.left + plotW, y1: y(v), y2: y(v), class: "kmem-grid" }, svg);
    node("text", { x: PAD.left - 4, y: y(v) + 3, "text-anchor": "end", class: "kmem-tick" }, svg).textContent = bytes(v);
  }
  const tStep = niceStep(tMax, Math.max(2, Math.floor(plotW / 90)));
  for (let t = 0; t <= tMax + 1e-12; t += tStep) {
    node("text", { x: x(t), y: HEIGHT - 6, "text-anchor": "middle", class: "kmem-tick" }, svg).textContent = seconds(t, tStep);
  }
  for (const [name, value, cls] of lines) {
    if (value > hi || value < lo) continue;
    node("line", { x1: PAD.left, x2: PAD.left + plotW, y1: y(value), y2: y(value), class: cls }, svg);
    node("text", { x: PAD.left + plotW - 3, y: y(value) - 3, "text-anchor": "end", class: `${cls}-label` }, svg).textContent = `${name} ${bytes(value)}`;
  }
  for (const [t] of data.marks) node("line", { x1: x(t), x2: x(t), y1: PAD.top, y2: PAD.top + plotH, class: "kmem-mark" }, svg);
  for (const key of visible) {
    const s = data.series[key], source = data.sources[key] || {};
    let d = "", last = null;
    for (let i = 0; i < s.t.length; i++) {
      if (s.v[i] === null) { last = null; continue; }
      const px = x(s.t[i]).toFixed(1), py = y(s.v[i]).toFixed(1);
      // steps: a reading holds until the next one
      d += last === null ? `M${px},${py}` : source.dashed ? `L${px},${py}` : `H${px}V${py}`;
      last = py;
    }
    if (d) node("path", { d, stroke: source.color || "currentColor", class: source.dashed ? "kmem-curve kmem-dashed" : "kmem-curve" }, svg);
  }
  for (const peak of data.peaks) {
    if (!visible.includes(peak.key)) continue;
    const px = Math.min(Math.max(x(peak.t), PAD.left + 5), PAD.left + plotW - 5), py = y(peak.v);
    node("path", { d: `M${px - 5},${py - 9}h10l-5,8z`, fill: (data.sources[peak.key] || {}).color, class: "kmem-peak-mark" }, svg);
    const right = px > PAD.left + plotW / 2;
    node("text", { x: right ? px - 8 : px + 8, y: Math.max(py - 2, PAD.top + 10), "text-anchor": right ? "end" : "start", class: "kmem-peak-label" }, svg).textContent = `peak ${bytes(peak.v)}`;
  }
  const cursor = node("line", { y1: PAD.top, y2: PAD.top + plotH, class: "kmem-cursor", visibility: "hidden" }, svg);
  const hit = node("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, fill: "transparent" }, svg);
  hit.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect();
    const t = Math.min(Math.max(((event.clientX - box.left - PAD.left) / plotW) * tMax, 0), tMax);
    cursor.setAttribute("x1", x(t));
    cursor.setAttribute("x2", x(t));
    cursor.setAttribute("visibility", "visible");
    tooltip.replaceChildren();
    html("div", "kmem-tip-time", tooltip, seconds(t, tMax / 100));
    for (const key of visible) {
      const line = html("div", "", tooltip);
      html("span", "kmem-swatch", line).style.background = (data.sources[key] || {}).color;
      line.append(` ${(data.sources[key] || {}).label || key}: ${bytes(valueAt(data.series[key], t))}`);
    }
    tooltip.style.left = `${Math.min(event.clientX - box.left + 12, width - 220)}px`;
    tooltip.style.top = `${event.clientY - box.top + 8}px`;
    tooltip.style.display = "block";
  });
  hit.addEventListener("mouseleave", () => { cursor.setAttribute("visibility", "hidden"); tooltip.style.display = "none"; });
}

function drawMarks(strip, data, width) {
  strip.replaceChildren();
  const plotW = Math.max(width - PAD.left - PAD.right, 40);
  const tMax = Math.max(data.elapsed, 1e-3);
  let free = 0; // labels never overlap: one that would is left out (its line stays)
  for (const [t, text] of data.marks) {
    const px = PAD.left + (plotW * t) / tMax;
    const label = html("span", "kmem-mark-label", strip, text);
    const w = label.offsetWidth || 7 * text.length;
    const left = Math.min(Math.max(px - w / 2, 0), width - w);
    if (left < free) { label.remove(); continue; }
    label.style.left = `${left}px`;
    free = left + w + 6;
  }
}

// While the cell runs: each curve's latest reading and its highest so far, in the rows the
// final table will use, so that the panel does not jump when the cell ends.
function liveFacts(facts, data) {
  facts.replaceChildren();
  html("div", "kmem-running", facts, `running ${data.elapsed.toFixed(1)} s`);
  const table = html("table", "kmem-live", facts);
  for (const [key, s] of Object.entries(data.series)) {
    const known = s.v.filter((v) => v !== null);
    if (!known.length) continue;
    const source = data.sources[key] || {};
    const tr = html("tr", "", table);
    html("td", "", tr, source.row || "");
    const name = html("td", "", tr);
    html("span", "kmem-swatch", name).style.background = source.color;
    name.append(` ${source.label || key}`);
    html("td", "", tr, `now ${bytes(known[known.length - 1])}`);
    html("td", "", tr, `highest so far ${bytes(known.reduce((a, b) => Math.max(a, b)))}`);
  }
}

function render({ model, el }) {
  const store = storeOf(model);
  const root = html("div", "kmem-panel", el);
  const header = html("div", "kmem-header", root);
  const legend = html("div", "kmem-legend", root);
  const strip = html("div", "kmem-marks", root);
  const charts = html("div", "kmem-curves", root);
  const tooltip = html("div", "kmem-tooltip", charts);
  const facts = html("div", "kmem-facts", root);
  const buttons = html("div", "kmem-buttons", root);
  const status = html("div", "kmem-status", root);
  const historyView = html("div", "kmem-history", root);
  const actions = {};
  for (const [action, label, tip] of [
    ["clear", "Clear Keras session", "keras.utils.clear_session() and gc.collect(), then show what was freed"],
    ["save", "Save", "PNG and CSV of this cell, next to the notebook"],
    ["history", "History", "memory across every measured cell of this kernel"],
  ]) {
    const button = html("button", "kmem-button", buttons, label);
    button.title = tip;
    button.addEventListener("click", () => {
      if (action !== "history") status.textContent = "…";
      model.send({ action });
    });
    actions[action] = button;
  }

  function redraw() {
    const meta = model.get("meta") || { rows: [] };
    const data = view(model, store);
    const width = Math.max(charts.clientWidth || el.clientWidth || 760, 320);
    header.innerHTML = model.get("header_html");
    root.classList.toggle("kmem-done", data.done);
    legend.replaceChildren();
    for (const [key, source] of Object.entries(data.sources)) {
      if (!data.series[key]) continue;
      const chip = html("button", store.hidden.has(key) ? "kmem-chip kmem-off" : "kmem-chip", legend);
      html("span", "kmem-swatch", chip).style.background = source.color;
      chip.append(` ${source.label}${source.row !== undefined && meta.rows.length > 2 ? ` (${source.row})` : ""}`);
      chip.title = "show or hide this curve";
      chip.addEventListener("click", () => {
        store.hidden.has(key) ? store.hidden.delete(key) : store.hidden.add(key);
        for (const again of store.views) again();
      });
    }
    for (const svg of charts.querySelectorAll("svg")) svg.remove();
    for (const row of meta.rows) {
      const keys = Object.keys(data.series).filter((k) => (data.sources[k] || {}).row === row.name);
      const svg = node("svg", { class: "kmem-row" });
      charts.insertBefore(svg, tooltip);
      drawRow(svg, row, keys, data, store, width, tooltip);
    }
    drawMarks(strip, data, width);
    if (data.done) facts.innerHTML = model.get("facts_html");
    else liveFacts(facts, data);
    const enabled = model.get("actions") || [];
    for (const [action, button] of Object.entries(actions)) {
      button.disabled = !enabled.includes(action);
      button.style.display = model.get("retired") ? "none" : "";
    }
    status.textContent = model.get("status");
    historyView.innerHTML = model.get("history_html");
  }

  store.views.add(redraw);
  for (const name of ["final", "facts_html", "header_html", "actions", "status", "meta", "retired",
                      "history_html"]) {
    model.on(`change:${name}`, redraw);
  }
  let drawnWidth = 0;
  const resize = new ResizeObserver(() => {
    if (charts.clientWidth !== drawnWidth) { drawnWidth = charts.clientWidth; redraw(); }
  });
  resize.observe(charts);
  redraw();
  return () => { store.views.delete(redraw); resize.disconnect(); };
}

export default { initialize, render };
