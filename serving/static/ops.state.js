// The operator page's state, shared by its views: what the APIs last said, what each view drew,
// and a colour per version.

export const PALETTE = ["#2457c5", "#d9480f", "#1f7a4d", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700", "#495057"];
export const OUTCOME_COLORS = {
  published: "#1f7a4d",
  gate_failed: "#b3261e",
  failed: "#6a1b1a",
  skipped: "#8a94a3",
  reward_updated: "#2457c5",
  running: "#e8a33d",
};

export const state = {
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

export const byId = (id) => document.getElementById(id);

export function colorOf(version) {
  if (!state.colors.has(version)) state.colors.set(version, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(version);
}

// True when `data` differs from what `view` drew last (and remember it): views redraw only on change.
export function changed(view, data) {
  const text = JSON.stringify(data);
  if (state.drawn[view] === text) return false;
  state.drawn[view] = text;
  return true;
}
