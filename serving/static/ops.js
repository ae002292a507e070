// The operator page: the roll-out (stable, canary, share) with promote / roll back / share controls,
// the versions in the model store, live feedback per version and the trainer's rounds as charts.
// Reads serving's roll-out API and the trainer's /history every few seconds; changes need the admin
// key, which stays in this tab's sessionStorage. Every name and message is set as text, never HTML.

import { OpsError, loadConfig, policyAction, policyStatus, policyVersions, trainerHistory } from "./ops.api.js";
import { emptyChart, lineChart, niceTicks, stripChart } from "./ops.charts.js";
import { KeyPanel } from "./keys.js";

const REFRESH_MS = 5_000;
const ROUNDS_SHOWN = 25;
const PALETTE = ["#2457c5", "#d9480f", "#1f7a4d", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700", "#495057"];
const OUTCOME_COLORS = {
  published: "#1f7a4d",
  gate_failed: "#b3261e",
  failed: "#6a1b1a",
  skipped: "#8a94a3",
  reward_updated: "#2457c5",
  running: "#e8a33d",
};

const state = {
  config: null,
  policy: null, // GET /v1/policy
  versions: null, // GET /v1/policy/versions
  history: null, // GET {trainer}/history
  problems: { serving: "", trainer: "" },
  busy: false, // an admin action is in flight
  timer: null,
  refreshes: 0,
  drawn: {}, // what each view last drew, to redraw only on change
  colors: new Map(),
};

const byId = (id) => document.getElementById(id);

// -- formatting

const percent = (x) => `${(100 * x).toFixed(0)}%`;

function number(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(Number(x))) return "–";
  return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function clock(seconds, withDate = false) {
  const date = new Date(seconds * 1000);
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return withDate ? `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}` : time;
}

function duration(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  return seconds < 120 ? `${seconds.toFixed(0)} s` : `${(seconds / 60).toFixed(1)} min`;
}

// Ticks on round minutes or hours for a time axis, about five of them.
function timeTicks(low, high) {
  const steps = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
  const step = steps.find((s) => (high - low) / s <= 6) || steps[steps.length - 1];
  const ticks = [];
  for (let tick = Math.ceil(low / step) * step; tick <= high; tick += step) ticks.push(tick);
  return ticks;
}

// 95% Wilson score interval of a proportion.
function wilson(successes, total) {
  const z = 1.96;
  const p = successes / total;
  const centre = (p + (z * z) / (2 * total)) / (1 + (z * z) / total);
  const half = (z * Math.sqrt((p * (1 - p)) / total + (z * z) / (4 * total * total))) / (1 + (z * z) / total);
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

function colorOf(version) {
  if (!state.colors.has(version)) state.colors.set(version, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(version);
}

// -- services, the banner and the refresh stamp

function setService(name, status, problem = "") {
  const pill = byId(`service-${name}`);
  pill.dataset.state = status;
  pill.title = `${name}: ${status}`;
  state.problems[name] = problem;
  const banner = byId("banner");
  const lines = Object.values(state.problems).filter(Boolean);
  banner.replaceChildren(
    ...lines.map((line) => {
      const p = document.createElement("p");
      p.textContent = line;
      return p;
    }),
  );
  banner.hidden = lines.length === 0;
}

function noteFailure(error) {
  const status = error.status === 503 ? "loading" : "down";
  setService(error.service, status, error.message);
}

// -- the admin key

const adminKey = new KeyPanel("flywheel.adminKey", (key) =>
  key
    ? "An admin key is set for this tab: promote, roll back and the canary share will use it."
    : "No admin key: this page is read-only until you paste one.",
);

// -- operators' actions

function showAction(status, message) {
  const line = byId("action-state");
  line.dataset.state = status; // "pending", "done" or "error"
  line.textContent = message;
}

function setBusy(busy) {
  state.busy = busy;
  renderRollout();
  renderVersions();
}

async function act(action, body, question) {
  const key = adminKey.value;
  if (!key) {
    showAction("error", "Paste the admin key first (under “Admin key”): roll-out changes need it.");
    adminKey.open();
    return;
  }
  if (question && !window.confirm(question)) return;
  setBusy(true);
  showAction("pending", "Sending…");
  try {
    const message = await policyAction(action, body, key);
    showAction("done", `Done: ${message}.`);
  } catch (error) {
    showAction("error", error.message);
    if (error.status === 401) {
      adminKey.forget(); // refused: don't keep sending it
      adminKey.open();
    }
    if (error instanceof OpsError && error.status === 0) noteFailure(error);
  } finally {
    setBusy(false);
  }
  await refresh();
}

function promote(version) {
  const stable = state.policy ? state.policy.stable_version : "the stable version";
  act("promote", { version, reason: "promoted from the operator page" },
    `Promote ${version} to stable? It replaces ${stable} for every user.`);
}

function wireActions() {
  byId("promote").addEventListener("click", () => promote(state.policy.canary_version));
  byId("rollback").addEventListener("click", () => {
    const { canary_version: canary, stable_version: stable } = state.policy;
    act("rollback", { reason: "rolled back from the operator page" },
      `Roll back ${canary}? Every user goes back to ${stable}, and ${canary} is retired.`);
  });
  byId("fraction-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = byId("fraction-input");
    const share = Number(input.value);
    if (input.value === "" || !(share >= 0 && share <= 100)) {
      showAction("error", "The canary share is a percentage between 0 and 100.");
      return;
    }
    input.dataset.dirty = "";
    act("canary", { fraction: share / 100 });
  });
  byId("fraction-input").addEventListener("input", (event) => (event.target.dataset.dirty = "true"));
  byId("versions-table").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-version]");
    if (button) promote(button.dataset.version);
  });
}

// -- drawing

function changed(view, data) {
  const text = JSON.stringify(data);
  if (state.drawn[view] === text) return false;
  state.drawn[view] = text;
  return true;
}

function renderRollout() {
  const policy = state.policy;
  const history = state.history;
  byId("rollout").dataset.stale = String(Boolean(state.problems.serving));
  const canary = policy ? policy.canary_version : "";
  byId("promote").disabled = state.busy || !canary;
  byId("rollback").disabled = state.busy || !canary;
  byId("fraction-form").querySelector("button").disabled = state.busy || !policy;
  for (const id of ["promote", "rollback"]) byId(id).title = canary ? "" : "There is no canary now.";
  if (!policy) return;
  byId("stable-version").textContent = policy.stable_version;
  byId("canary-version").textContent = canary || "none";
  byId("canary-fraction").textContent = canary
    ? percent(policy.canary_fraction)
    : `${percent(policy.canary_fraction)} (applies to the next canary)`;
  const input = byId("fraction-input");
  if (document.activeElement !== input && !input.dataset.dirty) input.value = (100 * policy.canary_fraction).toFixed(0);
  byId("verdict").textContent = !history
    ? "unknown: the trainer can't be reached"
    : history.rollout_verdict || (canary ? "no verdict yet" : "no canary under test");
}

// Thumbs and head-to-head results per version over the chart window.
function totals() {
  const sums = new Map();
  for (const bucket of state.history ? state.history.buckets : []) {
    const sum = sums.get(bucket.version) || { up: 0, down: 0, wins: 0, losses: 0, ties: 0 };
    for (const key of Object.keys(sum)) sum[key] += bucket[key];
    sums.set(bucket.version, sum);
  }
  return sums;
}

function metricList(metrics) {
  const list = document.createElement("dl");
  for (const [name, value] of Object.entries(metrics).sort()) {
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = number(value, 4);
    list.append(term, detail);
  }
  return list;
}

function renderVersions() {
  const versions = state.versions;
  byId("versions").dataset.stale = String(Boolean(state.problems.serving));
  if (!versions) return;
  const sums = totals();
  const refused = state.policy ? state.policy.refused : {};
  const retiredWhy = state.policy ? state.policy.retired : {};
  if (!changed("versions", [versions, [...sums], refused, retiredWhy, state.busy])) return;
  const rows = versions.map((entry) => {
    const row = byId("version-row").content.firstElementChild.cloneNode(true);
    const m = entry.metrics || {};
    row.dataset.version = entry.version;
    row.querySelector(".name").textContent = entry.version;
    colorOf(entry.version);
    const details = row.querySelector(".metrics");
    if (Object.keys(m).length) details.querySelector("dl").replaceWith(metricList(m));
    else details.remove();
    // A retired version may stay loaded for a while (for pinned requests): it is still retired.
    const retired = entry.state === "loaded" && retiredWhy[entry.version] !== undefined;
    const shown = retired ? "retired" : entry.state;
    row.dataset.state = shown;
    const badge = row.querySelector(".badge");
    badge.textContent = shown;
    badge.dataset.state = shown;
    const note = entry.note || retiredWhy[entry.version] || refused[entry.version] || "";
    row.querySelector(".note").textContent = retired ? `${note} (still loaded here)` : note;
    row.querySelector(".parent").textContent = entry.parent_version || "–";
    row.querySelector(".published").textContent = entry.created_at ? clock(entry.created_at, true) : "–";
    row.querySelector(".accuracy").textContent = number(m.reward_accuracy);
    row.querySelector(".reward").textContent =
      m.eval_new_mean_reward === undefined
        ? "–"
        : `${number(m.eval_new_mean_reward)} (${number(m.eval_parent_mean_reward)})`;
    row.querySelector(".kl").textContent = number(m.eval_new_mean_kl ?? m.ppo_kl);
    const sum = sums.get(entry.version);
    const rated = sum ? sum.up + sum.down : 0;
    row.querySelector(".thumbs").textContent = rated ? `${sum.up}/${rated} (${percent(sum.up / rated)})` : "–";
    const compared = sum ? sum.wins + sum.losses + sum.ties : 0;
    row.querySelector(".wins").textContent = compared ? `${sum.wins}–${sum.losses}–${sum.ties}` : "–";
    if (shown !== "stable" && shown !== "refused") {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "quiet small";
      button.textContent = "Promote";
      button.dataset.version = entry.version;
      button.disabled = state.busy;
      button.setAttribute("aria-label", `Promote ${entry.version}`);
      row.querySelector(".act").append(button);
    }
    return row;
  });
  byId("versions-table").tBodies[0].replaceChildren(...rows);
}

function windowChoice() {
  const [windowS, bucketS] = byId("window").value.split(":").map(Number);
  return { windowS, bucketS };
}

function renderFeedback() {
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

// The charts of the trainer's round metrics; each line is [metric, name, colour, dashed].
const ROUND_CHARTS = {
  "chart-accuracy": {
    label: "Reward model held-out pairwise accuracy per round",
    yDomain: [0, 1],
    yFormat: percent,
    lines: [
      ["reward_accuracy", "new reward model", PALETTE[0], false],
      ["reward_accuracy_previous", "previous reward model", PALETTE[8], true],
    ],
  },
  "chart-reward": {
    label: "Reward per round",
    yFormat: (y) => number(y, 2),
    lines: [
      ["eval_new_mean_reward", "held-out: new policy", PALETTE[2], false],
      ["eval_parent_mean_reward", "held-out: parent", PALETTE[8], true],
      ["ppo_score_last", "PPO score, last step", PALETTE[1], false],
    ],
  },
  "chart-kl": {
    label: "KL to the reference policy per round",
    yFormat: (y) => number(y, 2),
    lines: [
      ["eval_new_mean_kl", "held-out: new policy", PALETTE[3], false],
      ["ppo_kl", "PPO, last step", PALETTE[1], true],
    ],
  },
};

function roundSeries(rounds, lines) {
  return lines.map(([key, name, color, dashed]) => ({
    name,
    color,
    dashed,
    points: rounds
      .filter((r) => r.metrics[key] !== undefined && r.metrics[key] !== null)
      .map((r) => ({ x: r.round, y: r.metrics[key], title: `round ${r.round}: ${name} ${number(r.metrics[key], 4)}` })),
  }));
}

function renderRounds() {
  const history = state.history;
  byId("rounds").dataset.stale = String(Boolean(state.problems.trainer));
  const charts = ["chart-outcomes", ...Object.keys(ROUND_CHARTS)];
  if (!history) {
    for (const id of charts) emptyChart(byId(id), "The trainer can't be reached.");
    delete state.drawn.rounds;
    return;
  }
  const rounds = history.rounds;
  if (!changed("rounds", rounds)) return;
  const roundAxis = {
    xFormat: (x) => `#${x}`,
    xTicks: (low, high) => niceTicks(low, high, 6).filter(Number.isInteger),
    xPad: 0.5,
    empty: "No round has measured this yet.",
  };
  stripChart(byId("chart-outcomes"), {
    label: "Outcome of each training round",
    empty: "No training round yet.",
    xFormat: (x) => `#${x}`,
    colors: OUTCOME_COLORS,
    items: rounds.map((r) => ({
      x: r.round,
      category: r.outcome,
      title: `round ${r.round}: ${r.outcome}${r.version ? ` → ${r.version}` : ""}${r.reason ? ` (${r.reason})` : ""}`,
    })),
  });
  for (const [id, { lines, ...chart }] of Object.entries(ROUND_CHARTS)) {
    lineChart(byId(id), { ...chart, ...roundAxis, series: roundSeries(rounds, lines) });
  }

  const rows = rounds
    .slice(-ROUNDS_SHOWN)
    .reverse()
    .map((r) => {
      const m = r.metrics;
      const cells = [
        `#${r.round}`,
        clock(r.started_at, true),
        r.finished_at ? duration(r.finished_at - r.started_at) : "running",
        r.outcome,
        r.version || "–",
        m.pairs_train === undefined ? "–" : `${m.pairs_train} + ${m.pairs_heldout ?? 0} held out`,
        number(m.reward_accuracy),
        m.eval_new_mean_reward === undefined
          ? "–"
          : `${number(m.eval_new_mean_reward)} (${number(m.eval_parent_mean_reward)})`,
        number(m.eval_new_mean_kl ?? m.ppo_kl),
        r.reason || "",
      ];
      const row = document.createElement("tr");
      row.dataset.outcome = r.outcome;
      cells.forEach((text, index) => {
        const cell = document.createElement(index === 0 ? "th" : "td");
        if (index === 0) cell.scope = "row";
        if (index === 3) cell.className = "outcome";
        cell.textContent = text;
        row.append(cell);
      });
      return row;
    });
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 10;
    cell.className = "hint";
    cell.textContent = "No training round yet: rounds start once enough feedback has arrived.";
    row.append(cell);
    rows.push(row);
  }
  byId("rounds-table").tBodies[0].replaceChildren(...rows);
}

function render() {
  renderRollout();
  renderVersions();
  renderFeedback();
  renderRounds();
}

// -- refreshing

async function refreshOnce() {
  if (!state.config) {
    try {
      state.config = await loadConfig();
    } catch (error) {
      noteFailure(error);
      return;
    }
  }
  const { windowS, bucketS } = windowChoice();
  const now = Date.now() / 1000;
  const since = windowS ? Math.floor((now - windowS) / bucketS) * bucketS : 0;
  const [serving, trainer] = await Promise.allSettled([
    Promise.all([policyStatus(), policyVersions()]),
    trainerHistory(state.config.trainer_url, bucketS, since),
  ]);
  if (serving.status === "fulfilled") {
    [state.policy, state.versions] = serving.value;
    setService("serving", "up");
  } else {
    noteFailure(serving.reason);
  }
  if (trainer.status === "fulfilled") {
    state.history = trainer.value;
    setService("trainer", "up");
  } else {
    state.history = null;
    noteFailure(trainer.reason);
  }
  render();
  byId("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

let running = null;

async function refresh() {
  while (running) await running;
  running = refreshOnce();
  try {
    await running;
  } finally {
    running = null;
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (!byId("auto-refresh").checked) return;
  state.timer = setTimeout(async () => {
    await refresh();
    schedule();
  }, REFRESH_MS);
}

async function start() {
  wireActions();
  adminKey.showState();
  byId("auto-refresh").addEventListener("change", () => {
    schedule();
    if (byId("auto-refresh").checked) refresh();
  });
  byId("window").addEventListener("change", () => refresh());
  await refresh();
  document.body.dataset.ready = "true";
  schedule();
}

start();
