// Small SVG charts for the operator page: line charts with optional error bars, and a strip of
// coloured marks. No library: the page works offline and under a strict content security policy
// (only SVG attributes are set, never style attributes). Labels are set as text, never as HTML.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 560;
const HEIGHT = 210;
const MARGIN = { left: 52, right: 14, top: 12, bottom: 30 };

function node(name, attributes = {}, text = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== null) element.textContent = text;
  return element;
}

// About `count` round numbers covering [min, max].
export function niceTicks(min, max, count = 5) {
  if (min === max) return [min];
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let tick = Math.ceil(min / step) * step; tick <= max + step * 1e-9; tick += step) ticks.push(+tick.toFixed(10));
  return ticks;
}

function domain(values, fixed) {
  let [low, high] = fixed || [Math.min(...values), Math.max(...values)];
  if (!fixed) {
    if (low === high) [low, high] = [low - (Math.abs(low) || 1) * 0.5, high + (Math.abs(high) || 1) * 0.5];
    const pad = (high - low) * 0.08;
    [low, high] = [low - pad, high + pad];
  }
  return [low, high];
}

export function emptyChart(host, message) {
  host.replaceChildren();
  const note = document.createElement("p");
  note.className = "chart-empty";
  note.textContent = message;
  host.append(note);
}

// A legend as a list: a swatch and a name per entry ({name, color, dashed?}).
export function legend(entries) {
  const list = document.createElement("ul");
  list.className = "legend";
  for (const entry of entries) {
    const item = document.createElement("li");
    const swatch = node("svg", { width: 18, height: 10, "aria-hidden": "true" });
    swatch.append(
      node("line", { x1: 1, y1: 5, x2: 17, y2: 5, stroke: entry.color, "stroke-width": 3,
        "stroke-dasharray": entry.dashed ? "4 3" : "none" }),
    );
    item.append(swatch, ` ${entry.name}`);
    list.append(item);
  }
  return list;
}

// A line chart into `host` (replacing what it held).
// spec: {label, series: [{name, color, dashed?, points: [{x, y, low?, high?, size?, title}]}],
//        xFormat(x), yFormat(y), yDomain?: [min, max], xPad?: number, empty: text when no point}
export function lineChart(host, spec) {
  const points = spec.series.flatMap((series) => series.points.filter((p) => p.y !== null && Number.isFinite(p.y)));
  if (points.length === 0) {
    emptyChart(host, spec.empty);
    return;
  }
  const xs = points.map((p) => p.x);
  const ys = points.flatMap((p) => [p.y, p.low ?? p.y, p.high ?? p.y]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const xPad = spec.xPad ?? (x1 - x0) * 0.04;
  [x0, x1] = x0 === x1 ? [x0 - (spec.xPad || 1), x1 + (spec.xPad || 1)] : [x0 - xPad, x1 + xPad];
  const [y0, y1] = domain(ys, spec.yDomain);
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => MARGIN.top + (1 - (y - y0) / (y1 - y0)) * plotH;

  const svg = node("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", class: "chart" });
  svg.append(node("title", {}, spec.label));
  const grid = node("g", { class: "grid" });
  for (const tick of niceTicks(y0, y1, 4)) {
    if (tick < y0 || tick > y1) continue;
    grid.append(node("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(tick), y2: sy(tick) }));
    grid.append(node("text", { x: MARGIN.left - 6, y: sy(tick) + 4, "text-anchor": "end" }, spec.yFormat(tick)));
  }
  for (const tick of (spec.xTicks || niceTicks)(x0, x1, 5)) {
    if (tick < x0 || tick > x1) continue;
    grid.append(node("line", { x1: sx(tick), x2: sx(tick), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4 }));
    grid.append(node("text", { x: sx(tick), y: HEIGHT - 10, "text-anchor": "middle" }, spec.xFormat(tick)));
  }
  grid.append(node("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: MARGIN.top + plotH,
    y2: MARGIN.top + plotH, class: "axis" }));
  svg.append(grid);

  for (const series of spec.series) {
    const group = node("g", { class: "series", "data-series": series.name });
    const shown = series.points.filter((p) => p.y !== null && Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    if (shown.length > 1) {
      group.append(node("polyline", {
        points: shown.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" "),
        fill: "none", stroke: series.color, "stroke-width": 2, "stroke-dasharray": series.dashed ? "5 4" : "none",
      }));
    }
    for (const p of shown) {
      if (p.low !== undefined && p.high !== undefined) {
        group.append(node("line", { x1: sx(p.x), x2: sx(p.x), y1: sy(p.low), y2: sy(p.high), stroke: series.color,
          "stroke-opacity": 0.3, "stroke-width": 2 }));
      }
      const dot = node("circle", { cx: sx(p.x), cy: sy(p.y), r: p.size ?? 3.5, fill: series.color });
      dot.append(node("title", {}, p.title));
      group.append(dot);
    }
    svg.append(group);
  }
  host.replaceChildren(svg, legend(spec.series));
}

// One mark per item along x (rounds by number), coloured by category, with a legend of categories.
// spec: {label, items: [{x, category, title}], colors: {category: color}, xFormat(x), empty}
export function stripChart(host, spec) {
  if (spec.items.length === 0) {
    emptyChart(host, spec.empty);
    return;
  }
  const height = 64;
  const xs = spec.items.map((item) => item.x);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  [x0, x1] = x0 === x1 ? [x0 - 1, x1 + 1] : [x0 - 0.5, x1 + 0.5];
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
  const svg = node("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", class: "chart strip" });
  svg.append(node("title", {}, spec.label));
  const grid = node("g", { class: "grid" });
  for (const tick of niceTicks(x0, x1, 8).filter((t) => Number.isInteger(t) && t >= x0 && t <= x1)) {
    grid.append(node("text", { x: sx(tick), y: height - 6, "text-anchor": "middle" }, spec.xFormat(tick)));
  }
  svg.append(grid);
  const width = Math.max(3, Math.min(18, plotW / (x1 - x0) - 2));
  for (const item of spec.items) {
    const mark = node("rect", { x: sx(item.x) - width / 2, y: 10, width, height: 26, rx: 2,
      fill: spec.colors[item.category] || "#8a94a3", "data-category": item.category });
    mark.append(node("title", {}, item.title));
    svg.append(mark);
  }
  const present = [...new Set(spec.items.map((item) => item.category))];
  host.replaceChildren(svg, legend(present.map((name) => ({ name, color: spec.colors[name] || "#8a94a3" }))));
}
