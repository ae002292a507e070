// The chat page: a conversation with streamed answers, thumbs and comparisons sent to the feedback
// service. Model output and user input are only ever set as text (textContent), never parsed as
// HTML, so nothing a model writes can run in the page.

import {
  ServiceError,
  keyedSubmissions,
  loadConfig,
  probe,
  sendComparison,
  sendCorrection,
  sendThumbs,
  streamChat,
} from "./api.js";
import { KeyPanel } from "./keys.js";

const DIMENSIONS = ["helpfulness", "accuracy", "safety", "tone"];
const HEALTH_INTERVAL_MS = 10_000;
const FINISH_NOTES = { length: "cut at the length limit", abort: "stopped" };

const state = {
  config: null,
  history: [], // the conversation as the chat API takes it
  abort: null, // the AbortController of the answer being streamed
  services: { chat: "unknown", feedback: "unknown" },
};

const byId = (id) => document.getElementById(id);
const fromTemplate = (id) => byId(id).content.firstElementChild.cloneNode(true);
const compareMode = () => document.querySelector('input[name="mode"]:checked').value === "compare";

function describeKey(key) {
  if (key) return `Using the key ending in …${key.slice(-4)} for this tab.`;
  return state.config && !state.config.anonymous ? "This server needs an API key." : "No key: you chat anonymously.";
}

const apiKey = new KeyPanel("flywheel.apiKey", describeKey);

// -- service status: the pills in the header and the banner under it

const SERVICE_PROBLEMS = {
  chat: {
    down: "The chat service can't be reached. Is `flywheel serve` (or `flywheel up`) running?",
    loading: "The chat service is not ready yet: the model is still loading.",
  },
  feedback: {
    down: "The feedback service can't be reached: you can chat, but ratings can't be saved until it is back.",
  },
};

function setService(name, status) {
  state.services[name] = status;
  const pill = byId(`service-${name}`);
  pill.dataset.state = status;
  pill.title = `${name}: ${status}`;
  const problems = Object.entries(state.services)
    .map(([service, value]) => SERVICE_PROBLEMS[service][value])
    .filter(Boolean);
  const banner = byId("banner");
  banner.textContent = problems.join(" ");
  banner.hidden = problems.length === 0;
}

async function checkServices() {
  setService("chat", await probe("/readyz"));
  if (state.config) setService("feedback", await probe(`${state.config.feedback_url}/healthz`));
}

function noteFailure(error) {
  if (error instanceof ServiceError && error.status === 0) setService(error.service, "down");
}

// -- the transcript

function scrollToEnd() {
  const transcript = byId("transcript");
  transcript.scrollTop = transcript.scrollHeight;
}

function addUserTurn(text) {
  byId("empty-hint").hidden = true;
  const turn = fromTemplate("user-template");
  turn.querySelector(".user-text").textContent = text;
  byId("transcript").append(turn);
  scrollToEnd();
}

function newAnswer(label) {
  const answer = fromTemplate("answer-template");
  if (label) {
    const heading = answer.querySelector(".answer-label");
    heading.textContent = label;
    heading.hidden = false;
  }
  return answer;
}

function showChoice(answer, choice, result) {
  answer.querySelector(".answer-text").textContent = choice.text;
  const version = choice.policyVersion || result.policyVersion;
  if (version) answer.querySelector(".policy").textContent = `policy ${version}`;
  const note = result.stopped ? FINISH_NOTES.abort : FINISH_NOTES[choice.finishReason];
  answer.querySelector(".finish").textContent = note ? ` · ${note}` : "";
}

function finishAnswer(answer, status) {
  answer.dataset.state = status; // "done", "stopped" or "error"
  answer.querySelector(".answer-text").setAttribute("aria-busy", "false");
}

function failAnswer(answer, message) {
  finishAnswer(answer, "error");
  const error = answer.querySelector(".answer-error");
  error.textContent = message;
  error.hidden = false;
}

// -- ratings

function dimensionSelect(name) {
  const label = document.createElement("label");
  label.append(`${name[0].toUpperCase()}${name.slice(1)} `);
  const select = document.createElement("select");
  select.name = name;
  select.append(new Option("–", ""));
  for (let score = 1; score <= 5; score += 1) select.append(new Option(String(score), String(score)));
  label.append(select);
  return label;
}

function collectThumbs(form, result, index, rating) {
  const body = {
    completion_id: result.id,
    choice_index: index,
    rating,
    feedback_token: result.choices[index].feedbackToken,
  };
  const comment = form.elements.comment.value.trim();
  if (comment) body.comment = comment;
  const dimensions = {};
  for (const name of DIMENSIONS) {
    const value = form.elements[name].value;
    if (value) dimensions[name] = Number(value);
  }
  if (Object.keys(dimensions).length > 0) body.dimensions = dimensions;
  return body;
}

// Post one piece of feedback from a form: "Sending…", then the thanks (or the error) in `status`,
// the details folded away once it is recorded.
async function submitFromForm({ form, status, send, details }, post, thanks) {
  send.disabled = true;
  form.dataset.state = "sending";
  status.textContent = "Sending…";
  try {
    const accepted = await post();
    setService("feedback", "up");
    form.dataset.state = "sent";
    status.textContent = accepted.duplicate ? "Already recorded." : thanks;
    details.hidden = true;
  } catch (error) {
    noteFailure(error);
    form.dataset.state = "error";
    status.textContent = error.message;
  } finally {
    send.disabled = false;
  }
}

// Thumbs under one answer: a click picks the rating and opens the optional details; "Send
// feedback" posts it. A second rating of the same answer replaces the first in the trainer.
function attachRating(answer, result, index) {
  const form = fromTemplate("rating-template");
  const details = form.querySelector(".rating-details");
  const status = form.querySelector(".rating-state");
  const send = details.querySelector('button[type="submit"]');
  const dimensions = form.querySelector(".dimensions");
  for (const name of DIMENSIONS) dimensions.append(dimensionSelect(name));
  const keyed = keyedSubmissions();
  let rating = null;

  for (const thumb of form.querySelectorAll(".thumb")) {
    thumb.addEventListener("click", () => {
      rating = thumb.dataset.rating;
      for (const other of form.querySelectorAll(".thumb")) other.setAttribute("aria-pressed", String(other === thumb));
      details.hidden = false;
      status.textContent = "";
      form.elements.comment.focus();
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!rating) return;
    const body = keyed(collectThumbs(form, result, index, rating));
    await submitFromForm(
      { form, status, send, details },
      () => sendThumbs(state.config.feedback_url, body, apiKey.value),
      "Thanks, recorded.",
    );
  });
  answer.append(form);
}

// "Edit" under one answer: the user rewrites it as it should have been; "Send correction" posts
// the rewrite, which the trainer learns as a demonstration and as a pair over the original.
function attachCorrection(answer, result, index) {
  const form = fromTemplate("correction-template");
  const details = form.querySelector(".correction-details");
  const status = form.querySelector(".correction-state");
  const send = details.querySelector('button[type="submit"]');
  const keyed = keyedSubmissions();
  form.querySelector(".edit").addEventListener("click", () => {
    details.hidden = false;
    if (!form.elements.text.value) form.elements.text.value = result.choices[index].text;
    status.textContent = "";
    form.elements.text.focus();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.elements.text.value;
    if (!text.trim() || text === result.choices[index].text) {
      status.textContent = "Change the answer first: a correction is your own rewrite.";
      return;
    }
    const body = keyed({
      completion_id: result.id,
      choice_index: index,
      feedback_token: result.choices[index].feedbackToken,
      text,
    });
    await submitFromForm(
      { form, status, send, details },
      () => sendCorrection(state.config.feedback_url, body, apiKey.value),
      "Thanks, your correction is recorded.",
    );
  });
  answer.append(form);
}

// The verdict under two answers side by side: A, B, or about the same (a tie), and by how much.
function attachVerdict(comparison, answers, result) {
  const form = comparison.querySelector(".verdict");
  const status = form.querySelector(".verdict-state");
  const keyed = keyedSubmissions();
  form.hidden = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const pick = event.submitter.value;
    const preferred = pick === "tie" ? 0 : Number(pick);
    const body = {
      completion_id: result.id,
      feedback_tokens: result.choices.map((choice) => choice.feedbackToken),
      preferred_choice_index: preferred,
      rejected_choice_index: 1 - preferred,
      strength: pick === "tie" ? "tie" : form.elements.strength.value,
    };
    const buttons = form.querySelectorAll("button");
    buttons.forEach((button) => (button.disabled = true));
    form.dataset.state = "sending";
    status.textContent = "Sending…";
    try {
      const accepted = await sendComparison(state.config.feedback_url, keyed(body), apiKey.value);
      setService("feedback", "up");
      form.dataset.state = "sent";
      answers.forEach((answer, index) => answer.classList.toggle("preferred", pick !== "tie" && index === preferred));
      const verdict = pick === "tie" ? "about the same" : `${"AB"[preferred]} is better`;
      status.textContent = accepted.duplicate ? "Already recorded." : `Thanks, recorded: ${verdict}.`;
      keepInConversation(result, preferred);
    } catch (error) {
      noteFailure(error);
      form.dataset.state = "error";
      status.textContent = error.message;
    } finally {
      buttons.forEach((button) => (button.disabled = false));
    }
  });
}

// The conversation goes on from the preferred answer, if nothing was said after it.
function keepInConversation(result, index) {
  const last = state.history[state.history.length - 1];
  if (last && last.completionId === result.id) last.content = result.choices[index].text;
}

// -- asking

function setBusy(busy) {
  byId("send").disabled = busy;
  byId("stop").hidden = !busy;
}

async function ask(prompt) {
  const compare = compareMode();
  const n = compare ? 2 : 1;
  addUserTurn(prompt);
  const messages = [...state.history, { role: "user", content: prompt }].map(({ role, content }) => ({ role, content }));

  let answers;
  let comparison = null;
  if (compare) {
    comparison = fromTemplate("compare-template");
    answers = [newAnswer("A"), newAnswer("B")];
    comparison.querySelector(".pair").append(...answers);
    byId("transcript").append(comparison);
  } else {
    answers = [newAnswer(null)];
    byId("transcript").append(answers[0]);
  }

  const controller = new AbortController();
  state.abort = controller;
  setBusy(true);
  try {
    const result = await streamChat({
      messages,
      n,
      apiKey: apiKey.value,
      signal: controller.signal,
      onUpdate: (partial) => {
        answers.forEach((answer, index) => showChoice(answer, partial.choices[index], partial));
        scrollToEnd();
      },
    });
    setService("chat", "up");
    answers.forEach((answer, index) => {
      showChoice(answer, result.choices[index], result);
      finishAnswer(answer, result.stopped ? "stopped" : "done");
    });
    if (result.id === null) return; // stopped before the first word: nothing to rate or keep
    state.history.push({ role: "user", content: prompt });
    state.history.push({ role: "assistant", content: result.choices[0].text, completionId: result.id });
    // Each choice's feedback token comes with its first words; a choice stopped before them can't be rated.
    if (!result.choices.every((choice) => choice.feedbackToken)) return;
    if (compare) attachVerdict(comparison, answers, result);
    else {
      attachRating(answers[0], result, 0);
      attachCorrection(answers[0], result, 0);
    }
  } catch (error) {
    noteFailure(error);
    answers.forEach((answer) => failAnswer(answer, error.message));
    if (error.status === 401) apiKey.open(); // this server wants a key: show where it goes
    byId("prompt").value ||= prompt; // the question is not lost: send it again when the service is back
  } finally {
    state.abort = null;
    setBusy(false);
    scrollToEnd();
  }
}

// -- wiring

function wireComposer() {
  const prompt = byId("prompt");
  byId("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || state.abort) return;
    prompt.value = "";
    ask(text);
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      byId("composer").requestSubmit();
    }
  });
  byId("stop").addEventListener("click", () => state.abort && state.abort.abort());
  byId("new-chat").addEventListener("click", () => {
    if (state.abort) state.abort.abort();
    state.history = [];
    for (const turn of byId("transcript").querySelectorAll(".turn, .answer, .comparison")) turn.remove();
    byId("empty-hint").hidden = false;
    prompt.focus();
  });
}

async function start() {
  wireComposer();
  try {
    state.config = await loadConfig();
  } catch (error) {
    noteFailure(error);
    byId("banner").textContent = error.message;
    byId("banner").hidden = false;
    return;
  }
  if (!state.config.anonymous && !apiKey.value) apiKey.open();
  apiKey.showState();
  await checkServices();
  setInterval(checkServices, HEALTH_INTERVAL_MS);
  document.body.dataset.ready = "true";
}

start();
