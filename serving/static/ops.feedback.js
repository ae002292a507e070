// The operator page's feedback view: thumbs-up rate per version over time (Wilson intervals) and
// head-to-head comparisons, from the trainer's /history.

import { emptyChart, lineChart } from "./ops.charts.js";
import { clock, number, percent, timeTicks, wilson } from "./ops.format.js";
import { byId, changed, colorOf, state } from "./ops.state.js";

export function windowChoice() {
  const [windowS, bucketS] = byId("window").value.split(":").map(Number);
  return { windowS, bucketS };
}

export function renderFeedback() {
  const history = state.history;
  const panel = byId("feedback");
  panel.dataset.stale = String(Boolean(state.problems.trainer));
  if (!history) {
    for (const id of ["chart-uprate", "chart-volume", "chart-wins"]) emptyChart(byId(id), "The trainer can't be reached.");
    delete state.drawn.feedback;
    return;
  }
  if (!changed("feedback", [history.buckets, history.comparisons, history.bucket_s, [...state.colors]])) return;
  const half = history.bucket_s / 2;
  const longWindow = windowChoice().windowS === 0 || windowChoice().windowS > 43200;
  const byVersion = new Map();
  for (const bucket of history.buckets) {
    if (!byVersion.has(bucket.version)) byVersion.set(bucket.version, []);
    byVersion.get(bucket.version).push(bucket);
  }
  // Versions in the store's order (their colours were given in it), then any others by name.
  const versions = [...byVersion.keys()].sort((a, b) => a.localeCompare(b));
  versions.forEach(colorOf);
  const order = [...state.colors.keys()];
  versions.sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const series = (pick) =>
    versions.map((version) => ({
      name: version,
      color: colorOf(version),
      points: byVersion.get(version).map((bucket) => pick(version, bucket)).filter(Boolean),
    }));
  const when = (bucket) => clock(bucket.start, longWindow);
  const timeAxis = { xFormat: (x) => clock(x, longWindow), xTicks: timeTicks, xPad: half };

  lineChart(byId("chart-uprate"), {
    label: "Thumbs-up rate per version over time",
    empty: "No thumbs in this window yet.",
    yDomain: [0, 1],
    yFormat: percent,
    ...timeAxis,
    series: series((version, b) => {
      const n = b.up + b.down;
      if (!n) return null;
      const [low, high] = wilson(b.up, n);
      return { x: b.start + half, y: b.up / n, low, high, size: 2.5 + Math.min(4, Math.sqrt(n) / 2),
        title: `${version} · ${when(b)}: ${b.up} up, ${b.down} down (${percent(b.up / n)})` };
    }),
  });
  lineChart(byId("chart-volume"), {
    label: "Thumbs per bucket and version",
    empty: "No thumbs in this window yet.",
    yFormat: (y) => number(y, 0),
    ...timeAxis,
    series: series((version, b) => {
      const n = b.up + b.down;
      return n ? { x: b.start + half, y: n, title: `${version} · ${when(b)}: ${n} thumbs` } : null;
    }),
  });
  lineChart(byId("chart-wins"), {
    label: "Head-to-head comparison win rate per version",
    empty: "No comparisons between answers of different versions in this window.",
    yDomain: [0, 1],
    yFormat: percent,
    ...timeAxis,
    series: series((version, b) => {
      const n = b.wins + b.losses + b.ties;
      if (!n) return null;
      return { x: b.start + half, y: (b.wins + b.ties / 2) / n,
        title: `${version} · ${when(b)}: ${b.wins} won, ${b.losses} lost, ${b.ties} tied` };
    }),
  });
  const { total, across_versions: across } = history.comparisons;
  byId("comparisons-note").textContent =
    total === 0
      ? "No comparisons in this window."
      : `${total} comparison${total === 1 ? "" : "s"} in this window; ${across} between answers of different ` +
        `versions${across ? "" : " (each compared two answers of one version, so none is a head-to-head result)"}.`;
}
