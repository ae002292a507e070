// The operator page: the roll-out (stable, canary, share) with promote / roll back / share controls,
// the versions in the model store, live feedback per version and the trainer's rounds as charts.
// Reads serving's roll-out API and the trainer's /history every few seconds; changes need the admin
// key, which stays in this tab's sessionStorage. Every name and message is set as text, never HTML.

import { OpsError, loadConfig, policyAction, policyStatus, policyVersions, trainerHistory } from "./ops.api.js";
import { renderFeedback, windowChoice } from "./ops.feedback.js";
import { clock, number, percent } from "./ops.format.js";
import { renderRounds } from "./ops.rounds.js";
import { byId, changed, colorOf, state } from "./ops.state.js";
import { KeyPanel } from "./keys.js";

const REFRESH_MS = 5_000;

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
    row.querySelector(".algorithm").textContent = (entry.algorithm || "").toUpperCase() || "–";
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
