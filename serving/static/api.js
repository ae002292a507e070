// The chat page's network calls: the streamed chat API on this origin and the feedback service on
// its own. No DOM here. Every failure becomes a ServiceError whose message a person can act on.

export class ServiceError extends Error {
  constructor(service, message, status = 0) {
    super(message);
    this.service = service; // "chat" or "feedback"
    this.status = status; // 0: the service could not be reached at all
  }
}

function headers(apiKey) {
  const result = { "Content-Type": "application/json" };
  if (apiKey) result.Authorization = `Bearer ${apiKey}`;
  return result;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch {
    // not JSON: fall through to the status line
  }
  return response.statusText || "no details";
}

// Yields the JSON payload of each `data:` line of a server-sent-event stream; null for [DONE].
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        yield data === "[DONE]" ? null : JSON.parse(data);
      }
    }
  }
}

function absorb(result, chunk) {
  result.id = chunk.id;
  result.policyVersion = chunk.policy_version;
  for (const piece of chunk.choices) {
    const choice = result.choices[piece.index];
    if (!choice) continue;
    choice.text += (piece.delta && piece.delta.content) || "";
    if (piece.feedback_token) choice.feedbackToken = piece.feedback_token;
    if (piece.policy_version) choice.policyVersion = piece.policy_version; // compare mode: per answer
    if (piece.finish_reason) choice.finishReason = piece.finish_reason;
  }
}

// Streams a chat completion with n choices. `onUpdate(result)` runs after every chunk; the result
// is returned when the stream ends. Stopping through `signal` returns what came so far, with
// `stopped` set.
export async function streamChat({ messages, n, apiKey, signal, onUpdate }) {
  const result = {
    id: null,
    policyVersion: null,
    stopped: false,
    choices: Array.from({ length: n }, (_, index) => ({ index, text: "", feedbackToken: null, finishReason: null })),
  };
  let response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(apiKey),
      // With two answers, ask for one from the stable version and one from the canary (when there
      // is a canary), so the comparison judges the two head to head.
      body: JSON.stringify({ messages, n, stream: true, compare_versions: n === 2 }),
      signal,
    });
  } catch (error) {
    if (signal.aborted) return { ...result, stopped: true };
    throw new ServiceError("chat", "The chat service can't be reached. Is it running?");
  }
  if (!response.ok) {
    const text = await errorText(response);
    throw new ServiceError("chat", `The chat service answered ${response.status}: ${text}`, response.status);
  }
  let finished = false;
  try {
    for await (const chunk of sseData(response.body)) {
      if (chunk === null) {
        finished = true;
        break;
      }
      absorb(result, chunk);
      onUpdate(result);
    }
  } catch (error) {
    if (signal.aborted) return { ...result, stopped: true };
    throw new ServiceError("chat", "The connection to the chat service was lost in the middle of the answer.");
  }
  if (!finished) throw new ServiceError("chat", "The answer was cut off before it finished.");
  return result;
}

async function postFeedback(feedbackUrl, path, body, apiKey) {
  let response;
  try {
    response = await fetch(`${feedbackUrl}${path}`, { method: "POST", headers: headers(apiKey), body: JSON.stringify(body) });
  } catch (error) {
    throw new ServiceError(
      "feedback",
      `The feedback service at ${feedbackUrl} can't be reached, so this was not saved. ` +
        "Is it running, and does it allow this page's origin (FLYWHEEL_CORS_ORIGINS)?",
    );
  }
  if (!response.ok) {
    const text = await errorText(response);
    throw new ServiceError("feedback", `The feedback service refused it (${response.status}): ${text}`, response.status);
  }
  return response.json();
}

function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID(); // only in secure contexts (https, localhost)
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// Stamps each feedback submission with an idempotency key: sending the same body again (a retry
// after a failure, or a second click) reuses its key, so the service answers "already recorded";
// any change gets a fresh key, so a change of mind (up, down, up) is a new event every time.
export function keyedSubmissions() {
  let last = { text: null, key: null };
  return (body) => {
    const text = JSON.stringify(body);
    if (text !== last.text) last = { text, key: newIdempotencyKey() };
    return { ...body, idempotency_key: last.key };
  };
}

// POST /v1/feedback: a thumb on one choice, with an optional comment and dimension scores.
export function sendThumbs(feedbackUrl, body, apiKey) {
  return postFeedback(feedbackUrl, "/v1/feedback", body, apiKey);
}

// POST /v1/comparisons: which choice of one completion is better.
export function sendComparison(feedbackUrl, body, apiKey) {
  return postFeedback(feedbackUrl, "/v1/comparisons", body, apiKey);
}

// POST /v1/corrections: the user's rewrite of one choice (a demonstration, and a pair over the original).
export function sendCorrection(feedbackUrl, body, apiKey) {
  return postFeedback(feedbackUrl, "/v1/corrections", body, apiKey);
}

// Where the feedback service is and whether this server takes anonymous users (GET /config.json).
export async function loadConfig() {
  let response;
  try {
    response = await fetch("/config.json", { cache: "no-store" });
  } catch {
    throw new ServiceError("chat", "The chat service can't be reached. Is it running?");
  }
  if (!response.ok) throw new ServiceError("chat", `The page's settings could not be read (${response.status}).`);
  return response.json();
}

// "up", "loading" (answers 503: the model is still loading) or "down".
export async function probe(url) {
  try {
    const response = await fetch(url, { cache: "no-store" });
    if (response.ok) return "up";
    return response.status === 503 ? "loading" : "down";
  } catch {
    return "down";
  }
}
