// Formatting for the operator page: numbers, shares, times, time-axis ticks and Wilson intervals.

export const percent = (x) => `${(100 * x).toFixed(0)}%`;

export function number(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "–";
  return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits });
}

export function clock(seconds, withDate = false) {
  const date = new Date(seconds * 1000);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return withDate ? `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}` : time;
}

export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  return seconds < 120 ? `${seconds.toFixed(0)} s` : `${(seconds / 60).toFixed(1)} min`;
}

// Ticks on round minutes or hours for a time axis, about five of them.
export function timeTicks(low, high) {
  const steps = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
  const step = steps.find((s) => (high - low) / s <= 6) || steps[steps.length - 1];
  const ticks = [];
  for (let tick = Math.ceil(low / step) * step; tick <= high; tick += step) ticks.push(tick);
  return ticks;
}

// 95% Wilson score interval of a proportion.
export function wilson(successes, total) {
  const z = 1.96;
  const p = successes / total;
  const centre = (p + (z * z) / (2 * total)) / (1 + (z * z) / total);
  const half = (z * Math.sqrt((p * (1 - p)) / total + (z * z) / (4 * total * total))) / (1 + (z * z) / total);
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}
