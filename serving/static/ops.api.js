// The operator page's network calls: serving's roll-out API on this origin, the trainer's history on
// its own. No DOM here. Every failure becomes an OpsError whose message an operator can act on.

export class OpsError extends Error {
  constructor(service, message, status = 0) {
    super(message);
    this.service = service; // "serving" or "trainer"
    this.status = status; // 0: the service could not be reached at all
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
    if (body && typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through to the status line
  }
  return response.statusText || "no details";
}

const UNREACHABLE = {
  serving: () => "Serving can't be reached at this page's address. Is `flywheel serve` (or `flywheel up`) running?",
  trainer: (url) =>
    `The trainer at ${url} can't be reached, so feedback history and rounds are not shown. ` +
    "Is it running, and does it allow this page's origin (FLYWHEEL_CORS_ORIGINS)?",
};

async function getJSON(service, url, base = "") {
  let response;
  try {
    response = await fetch(url, { cache: "no-store" });
  } catch {
    throw new OpsError(service, UNREACHABLE[service](base));
  }
  if (!response.ok) {
    const text = await errorText(response);
    const message =
      response.status === 503
        ? `The ${service} is not ready yet: ${text}.`
        : `The ${service} answered ${response.status}: ${text}`;
    throw new OpsError(service, message, response.status);
  }
  return response.json();
}

// GET /config.json: where the trainer is.
export function loadConfig() {
  return getJSON("serving", "/config.json");
}

// GET /v1/policy: stable, canary, canary fraction, loaded, refused and retired versions.
export function policyStatus() {
  return getJSON("serving", "/v1/policy");
}

// GET /v1/policy/versions: every version in the model store with its state and round metrics.
export async function policyVersions() {
  return (await getJSON("serving", "/v1/policy/versions")).versions;
}

// GET {trainer}/history: thumbs and comparisons per version and time bucket, and the rounds.
export function trainerHistory(trainerUrl, bucketSeconds, since) {
  const query = new URLSearchParams({ bucket_s: String(bucketSeconds), since: String(since) });
  return getJSON("trainer", `${trainerUrl}/history?${query}`, trainerUrl);
}

// POST /v1/policy/{action} with the admin key: promote, rollback or canary. Resolves to the answer's
// message; a refused key (401) or an impossible action (409) rejects with the server's reason.
export async function policyAction(action, body, adminKey) {
  let response;
  try {
    response = await fetch(`/v1/policy/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${adminKey}` },
      body: JSON.stringify(body),
    });
  } catch {
    throw new OpsError("serving", `${UNREACHABLE.serving()} Nothing was changed.`);
  }
  if (response.ok) return (await response.json()).message;
  const text = await errorText(response);
  if (response.status === 401) {
    throw new OpsError(
      "serving",
      "The admin key was refused (401): nothing was changed. Paste the operator's admin key (FLYWHEEL_ADMIN_KEY) under “Admin key”.",
      401,
    );
  }
  if (response.status === 409) throw new OpsError("serving", `Not done (409): ${text}`, 409);
  throw new OpsError("serving", `Serving answered ${response.status}: ${text}`, response.status);
}
