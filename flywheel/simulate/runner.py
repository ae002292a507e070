"""Simulated users chatting with a running Flywheel through its public APIs only.

Each turn: one user (round robin) sends one prompt to serving's OpenAI-compatible chat API
(`n=2` for a comparison turn), judges the answers by the hidden preference, and sends one
thumbs or one comparison to the feedback API with the choice's `feedback_token`. Service
errors are counted in the Tally, never raised; only a broken preference function, or keys
the services refuse (401), stop the run.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass

import httpx
import openai

from flywheel.simulate.judge import judge_comparison, judge_thumbs
from flywheel.simulate.preferences import SATISFIED_AT, Preference
from flywheel.simulate.stats import Answer, Feedback, Tally

log = logging.getLogger(__name__)

DEFAULT_TURNS = 50
_FEEDBACK_ATTEMPTS = 4  # 429 and 503 carry Retry-After; a retry reuses the idempotency key
_FAILURE_PAUSE_S = 1.0  # after a failed turn, so a service in trouble is not hammered


class ServiceUnavailable(RuntimeError):
    """A service is unreachable or not ready when the simulation starts."""


@dataclass(frozen=True)
class SimulationConfig:
    serving_url: str = "http://127.0.0.1:8000"
    feedback_url: str = "http://127.0.0.1:8001"
    users: int = 16
    turns: int | None = None  # None with no duration: DEFAULT_TURNS
    duration_s: float | None = None
    concurrency: int = 4
    noise: float = 0.1
    compare_share: float = 0.25
    correction_share: float = 0.0  # of thumbs-down turns, the share that also send the user's rewrite
    contrarian_share: float = 0.0  # of users, the share who state the opposite of the preference (1 - noise)
    seed: int = 0
    api_keys: tuple[str, ...] = ()  # one per user when the services require keys
    max_tokens: int | None = None  # None: serving's default
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        checks = [
            (self.users >= 1, f"--users must be at least 1, got {self.users}"),
            (self.turns is None or self.turns >= 1, f"--turns must be at least 1, got {self.turns}"),
            (self.duration_s is None or self.duration_s > 0, "--duration must be positive"),
            (self.concurrency >= 1, f"--concurrency must be at least 1, got {self.concurrency}"),
            (0.0 <= self.noise <= 1.0, f"--noise must be in [0, 1], got {self.noise}"),
            (0.0 <= self.compare_share <= 1.0, f"--compare-share must be in [0, 1], got {self.compare_share}"),
            (0.0 <= self.correction_share <= 1.0,
             f"--correction-share must be in [0, 1], got {self.correction_share}"),
            (0.0 <= self.contrarian_share <= 1.0,
             f"--contrarian-share must be in [0, 1], got {self.contrarian_share}"),
            (not self.api_keys or len(self.api_keys) >= self.users,
             f"{self.users} users but {len(self.api_keys)} API keys: give one --api-key per simulated user"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def noise_of(self, user: int) -> float:
        """How often `user` says the opposite of the preference: the first contrarian_share of users mostly do."""
        return 1.0 - self.noise if user < round(self.contrarian_share * self.users) else self.noise

    @property
    def turn_limit(self) -> int | None:
        return DEFAULT_TURNS if self.turns is None and self.duration_s is None else self.turns

    def user_key(self, index: int) -> str:
        """The Bearer key of a user: a real key, or in anonymous mode a key that names the user.

        Serving and feedback give an unknown key the id `anon-key-<hash of the key>` in anonymous
        mode, so distinct keys are distinct users, and the same on both services.
        """
        return self.api_keys[index] if self.api_keys else f"flywheel-simulated-user-{self.seed}-{index}"


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '15m' or '1.5h'."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise ValueError(f"--duration takes seconds or a number with s, m or h (90, 15m, 1h), got {text!r}") from None
    if value <= 0:
        raise ValueError(f"--duration must be positive, got {text!r}")
    return value


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def check_services(config: SimulationConfig) -> str:
    """Both services answer /readyz; returns the served model's name (from /v1/models)."""
    for name, url, flag in (("serving", config.serving_url, "--serving-url"),
                            ("feedback", config.feedback_url, "--feedback-url")):  # fmt: skip
        try:
            response = httpx.get(f"{base_url(url)}/readyz", timeout=10)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"the {name} service at {url} is not reachable ({exc or type(exc).__name__}); "
                f"start Flywheel with `flywheel up` (or `make run`), or point {flag} at it"
            ) from None
        if response.status_code != 200:
            raise ServiceUnavailable(
                f"the {name} service at {url} is not ready: GET /readyz answered "
                f"{response.status_code} {response.text[:200]}"
            )
    try:
        models = httpx.get(f"{base_url(config.serving_url)}/v1/models", timeout=10).json()["data"]
        return models[0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return "flywheel"


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str(error.get("message") if isinstance(error, dict) and error.get("message") else exc.message)


def _http_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


class Simulation:
    """The users, the turn counter and the Tally; `run` is one asyncio run of it."""

    def __init__(
        self,
        config: SimulationConfig,
        preference: Preference,
        prompts: list[str],
        model: str = "flywheel",
        transport: httpx.AsyncBaseTransport | None = None,  # tests: fake services
    ) -> None:
        if not prompts:
            raise ValueError("no prompts to send")
        self.config = config
        self.preference = preference
        self.prompts = prompts
        self.model = model
        self.tally = Tally()
        self.run_id = uuid.uuid4().hex[:12]
        self.fatal: str | None = None  # why the run stopped early (refused keys)
        self.started_wall = time.time()
        self._started = time.monotonic()
        self._next_turn = 0
        self._serving: openai.AsyncOpenAI | None = None
        self._transport = transport

    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def _claim_turn(self) -> int | None:
        limit, duration = self.config.turn_limit, self.config.duration_s
        if self.fatal or (limit is not None and self._next_turn >= limit):
            return None
        if duration is not None and self.elapsed_s() >= duration:
            return None
        turn, self._next_turn = self._next_turn, self._next_turn + 1
        return turn

    async def run(self) -> Tally:
        self.started_wall, self._started = time.time(), time.monotonic()
        timeout = self.config.request_timeout_s
        http = httpx.AsyncClient(transport=self._transport, timeout=timeout) if self._transport else None
        # The per-request Authorization header (the user's key) replaces this placeholder.
        self._serving = openai.AsyncOpenAI(base_url=f"{base_url(self.config.serving_url)}/v1", api_key="unused",
                                           timeout=timeout, max_retries=1, http_client=http)  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=base_url(self.config.feedback_url), timeout=30,
                                         transport=self._transport) as feedback:  # fmt: skip
                workers = [self._worker(feedback) for _ in range(self.config.concurrency)]
                await asyncio.gather(*workers)
        finally:
            await self._serving.close()
        return self.tally

    async def _worker(self, feedback: httpx.AsyncClient) -> None:
        while (turn := self._claim_turn()) is not None:
            self.tally.turns_started += 1
            if await self._turn(turn, feedback):
                self.tally.turns_completed += 1
            else:
                self.tally.turns_failed += 1
                await asyncio.sleep(_FAILURE_PAUSE_S)

    async def _turn(self, turn: int, feedback: httpx.AsyncClient) -> bool:
        """One prompt, its answers judged, one feedback event; False when a service failed."""
        config = self.config
        rng = random.Random(f"{config.seed}:{turn}")  # the same turn draws the same, whatever the scheduling
        user = turn % config.users
        key = config.user_key(user)
        prompt = rng.choice(self.prompts)
        compare = rng.random() < config.compare_share
        try:
            response = await self._serving.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                n=2 if compare else 1,
                max_tokens=config.max_tokens,
                extra_headers={"Authorization": f"Bearer {key}"},
                # a comparison pits the stable version against the canary when there is one
                extra_body={"compare_versions": True} if compare else None,
            )
        except openai.APIStatusError as exc:
            self._service_error("serving", f"http {exc.status_code}", _api_message(exc), exc.status_code)
            return False
        except openai.APITimeoutError as exc:
            self.tally.error("serving", "timeout", str(exc))
            return False
        except openai.APIConnectionError as exc:
            self.tally.error("serving", "connection", f"{exc}: {exc.__cause__ or ''}")
            return False
        except openai.OpenAIError as exc:
            self.tally.error("serving", type(exc).__name__, str(exc))
            return False

        at = self.elapsed_s()
        version = str((response.model_extra or {}).get("policy_version") or "unknown")
        choices = sorted(response.choices, key=lambda choice: choice.index)
        texts = [choice.message.content or "" for choice in choices]
        tokens = [(choice.model_extra or {}).get("feedback_token") for choice in choices]
        if len(choices) != (2 if compare else 1) or not all(tokens):
            self.tally.error("serving", "malformed response", f"{len(choices)} choices, feedback tokens {tokens}")
            return False
        scores = [self.preference.score(prompt, text) for text in texts]  # a PreferenceError ends the run
        for choice, score in zip(choices, scores, strict=True):
            choice_version = str((choice.model_extra or {}).get("policy_version") or version)  # compare mode
            self.tally.answers.append(Answer(turn, user, choice_version, at, score, score >= SATISFIED_AT))

        idempotency_key = f"sim-{self.run_id}-{turn}"
        if compare:
            verdict = judge_comparison((scores[0], scores[1]), rng, config.noise_of(user))
            kind, outcome, flipped = "comparison", verdict.strength, verdict.flipped
            path, body = "/v1/comparisons", {
                "completion_id": response.id, "feedback_tokens": tokens,
                "preferred_choice_index": verdict.preferred, "rejected_choice_index": verdict.rejected,
                "strength": verdict.strength, "idempotency_key": idempotency_key,
            }  # fmt: skip
        else:
            thumbs = judge_thumbs(scores[0], rng, config.noise_of(user))
            kind, outcome, flipped = "thumbs", thumbs.rating, thumbs.flipped
            path, body = "/v1/feedback", {
                "completion_id": response.id, "choice_index": 0, "rating": thumbs.rating,
                "feedback_token": tokens[0], "idempotency_key": idempotency_key,
            }  # fmt: skip
        accepted = await self._submit(feedback, path, body, key)
        self.tally.feedback.append(Feedback(turn, user, version, at, kind, outcome, accepted, flipped, response.id))
        if accepted and kind == "thumbs" and outcome == "down" and rng.random() < config.correction_share:
            rewrite = self.preference.correction(prompt, texts[0])
            if rewrite is not None:
                body = {"completion_id": response.id, "choice_index": 0, "feedback_token": tokens[0],
                        "text": rewrite[:8000], "idempotency_key": f"{idempotency_key}-fix"}  # fmt: skip
                fixed = await self._submit(feedback, "/v1/corrections", body, key)
                self.tally.feedback.append(
                    Feedback(turn, user, version, at, "correction", "rewrite", fixed, False, response.id)
                )
                accepted = accepted and fixed
        return accepted

    async def _submit(self, feedback: httpx.AsyncClient, path: str, body: dict, key: str) -> bool:
        for attempt in range(_FEEDBACK_ATTEMPTS):
            last = attempt == _FEEDBACK_ATTEMPTS - 1
            try:
                response = await feedback.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
            except httpx.HTTPError as exc:
                if last:
                    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
                    self.tally.error("feedback", kind, f"{type(exc).__name__}: {exc}")
                    return False
                await asyncio.sleep(2**attempt)
                continue
            if response.status_code == 202:
                return True
            if response.status_code in (429, 503) and not last:
                try:
                    wait = float(response.headers.get("retry-after", "1"))
                except ValueError:
                    wait = 1.0
                await asyncio.sleep(min(max(wait, 0.1), 5.0))
                continue
            self._service_error("feedback", f"http {response.status_code}", _http_message(response),
                                response.status_code)  # fmt: skip
            return False
        return False

    def _service_error(self, service: str, kind: str, message: str, status: int) -> None:
        self.tally.error(service, kind, message)
        if status == 401 and self.fatal is None:
            self.fatal = (
                f"the {service} service refused the simulated users' keys (401: {message}); "
                "it requires API keys: pass --api-key KEY once per simulated user"
            )
