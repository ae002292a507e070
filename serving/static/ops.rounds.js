// The operator page's rounds view: each round's outcome, and its reward model's accuracy, reward and
// KL per round, from the trainer's /history.

import { emptyChart, lineChart, niceTicks, stripChart } from "./ops.charts.js";
import { clock, duration, number, percent } from "./ops.format.js";
import { OUTCOME_COLORS, PALETTE, byId, changed, state } from "./ops.state.js";

const ROUNDS_SHOWN = 25;

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

export function renderRounds() {
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
        m.pairs_train === undefined
          ? "–"
          : `${m.pairs_train} + ${m.pairs_heldout ?? 0} held out` +
            (m.pairs_ai ? `, ${m.pairs_ai} from the AI judge` : "") +
            (m.raters_excluded ? `; ${m.raters_excluded} raters left out` : ""),
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
