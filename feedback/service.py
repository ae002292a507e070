"""FeedbackService: validates feedback, turns it into FeedbackEvents and appends them durably.

Knows nothing of HTTP or gRPC: both transports hand it the same validated models and map its
FeedbackRejected errors to their own status codes. A token proves the caller was served the
choices it rates; the claims in the token, not the request, name the policy versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass

from feedback.metrics import FeedbackMetrics
from feedback.outbox import Appended, Outbox, OutboxFull, OutboxRecord
from feedback.protocol import ComparisonCreate, CorrectionCreate, FeedbackCreate, PreferencePair
from flywheel.events import SCHEMA_VERSION, new_event_id, timestamp_now
from flywheel.hh import MalformedDialogue, split_pair
from flywheel.limits import RateLimiter
from flywheel.settings import FeedbackSettings
from flywheel.tokens import ExpiredFeedbackToken, FeedbackToken, InvalidFeedbackToken, TokenClaims
from flywheel.v1 import events_pb2

_STRENGTHS = {
    None: events_pb2.COMPARISON_STRENGTH_UNSPECIFIED,
    "much_better": events_pb2.COMPARISON_STRENGTH_MUCH_BETTER,
    "better": events_pb2.COMPARISON_STRENGTH_BETTER,
    "slightly_better": events_pb2.COMPARISON_STRENGTH_SLIGHTLY_BETTER,
    "tie": events_pb2.COMPARISON_STRENGTH_TIE,
}


class FeedbackRejected(Exception):
    """Feedback refused: `status` is the HTTP status, `reason` the metric label."""

    def __init__(self, status: int, reason: str, message: str, param: str | None = None, retry_after: float = 0):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.param = param
        self.retry_after = retry_after


@dataclass(frozen=True)
class Prepared:
    record: OutboxRecord
    kind: str
    policy_version: str = ""
    rating: str = ""


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class FeedbackService:
    def __init__(
        self,
        tokens: FeedbackToken,
        outbox: Outbox,
        metrics: FeedbackMetrics,
        settings: FeedbackSettings,
        limiter: RateLimiter,
    ) -> None:
        self.tokens = tokens
        self.outbox = outbox
        self.metrics = metrics
        self.settings = settings
        self.limiter = limiter
        self._dimensions = settings.dimension_names()
        self._flags = settings.flag_names()

    # -- validation

    def _claims(self, token: str, completion_id: str, choice_index: int, user_id: str, param: str) -> TokenClaims:
        try:
            claims = self.tokens.verify(token)
        except ExpiredFeedbackToken as exc:
            raise FeedbackRejected(403, "expired_token", str(exc), param) from None
        except InvalidFeedbackToken as exc:
            raise FeedbackRejected(403, "invalid_token", str(exc), param) from None
        if claims.completion_id != completion_id or claims.choice_index != choice_index:
            raise FeedbackRejected(403, "token_mismatch", "feedback_token was issued for another choice", param)
        if claims.user_id != user_id:
            raise FeedbackRejected(403, "other_user", "feedback_token was issued to another user", param)
        return claims

    def _rate_limit(self, user_id: str) -> None:
        wait = self.limiter.allow(user_id)
        if wait:
            raise FeedbackRejected(429, "rate_limited", "too much feedback; slow down", retry_after=wait)

    @staticmethod
    def _key(user_id: str, client_key: str | None) -> str | None:
        # Only a client's key makes a retry the same event (scoped to the user, so two users cannot
        # collide). None: the event is its own. A key derived from the content would also fold a
        # change of mind back into the first event (up, down, up: the third a "duplicate" of the
        # first), and downstream the latest rating must win.
        if client_key:
            return "client:" + hashlib.sha256(f"{user_id}\x1f{client_key}".encode()).hexdigest()
        return None

    def _check_comment(self, comment: str | None) -> None:
        if comment is not None and len(comment) > self.settings.comment_max_chars:
            raise FeedbackRejected(
                400, "invalid", f"comment is longer than {self.settings.comment_max_chars} characters", "comment"
            )

    def prepare_thumbs(self, body: FeedbackCreate, user_id: str) -> Prepared:
        kind = "thumbs"
        self._check_comment(body.comment)
        unknown = set(body.dimensions or {}) - self._dimensions
        if unknown:
            raise FeedbackRejected(
                400, "invalid", f"unknown dimensions {sorted(unknown)}; known: {sorted(self._dimensions)}", "dimensions"
            )
        bad_flags = set(body.flags or []) - self._flags
        if bad_flags:
            raise FeedbackRejected(
                400, "invalid", f"unknown flags {sorted(bad_flags)}; known: {sorted(self._flags)}", "flags"
            )
        claims = self._claims(body.feedback_token, body.completion_id, body.choice_index, user_id, "feedback_token")
        self._rate_limit(user_id)
        flags = sorted(set(body.flags)) if body.flags else []
        key = self._key(user_id, body.idempotency_key)
        event = self._event(body.completion_id, user_id, claims.policy_version, key, [claims.policy_version])
        thumbs = event.thumbs
        thumbs.choice_index = body.choice_index
        thumbs.rating = events_pb2.RATING_UP if body.rating == "up" else events_pb2.RATING_DOWN
        thumbs.comment = body.comment or ""
        if body.dimensions:
            thumbs.dimensions.update(body.dimensions)
        thumbs.flags.extend(flags)
        return Prepared(self._record(event, kind), kind, claims.policy_version, body.rating)

    def prepare_correction(self, body: CorrectionCreate, user_id: str) -> Prepared:
        """A rewrite of one choice, checked like thumbs on it.

        Whether the rewrite differs from the original is for the trainer to say (it holds the
        completion; this service never sees answers): a rewrite equal to it gives no pair there.
        """
        kind = "correction"
        self._check_comment(body.comment)
        if not body.text.strip():
            raise FeedbackRejected(400, "invalid", "text is empty: send the rewritten answer", "text")
        if len(body.text) > self.settings.correction_max_chars:
            raise FeedbackRejected(
                400, "invalid", f"text is longer than {self.settings.correction_max_chars} characters", "text"
            )
        claims = self._claims(body.feedback_token, body.completion_id, body.choice_index, user_id, "feedback_token")
        self._rate_limit(user_id)
        key = self._key(user_id, body.idempotency_key)
        event = self._event(body.completion_id, user_id, claims.policy_version, key, [claims.policy_version])
        event.correction.CopyFrom(
            events_pb2.Correction(choice_index=body.choice_index, text=body.text, comment=body.comment or "")
        )
        return Prepared(self._record(event, kind), kind, claims.policy_version)

    def prepare_comparison(self, body: ComparisonCreate, user_id: str) -> Prepared:
        kind = "comparison"
        count = len(body.feedback_tokens)
        ranking = self._ranking(body, count)
        claims = [
            self._claims(token, body.completion_id, index, user_id, f"feedback_tokens.{index}")
            for index, token in enumerate(body.feedback_tokens)
        ]
        if any(c.choice_count != count for c in claims):
            raise FeedbackRejected(
                400, "invalid", f"the completion has {claims[0].choice_count} choices; send one token for each",
                "feedback_tokens",
            )  # fmt: skip
        self._rate_limit(user_id)
        versions = [c.policy_version for c in claims]
        key = self._key(user_id, body.idempotency_key)
        event = self._event(body.completion_id, user_id, versions[ranking[0]], key, versions)
        event.comparison.CopyFrom(events_pb2.Comparison(ranking=ranking, strength=_STRENGTHS[body.strength]))
        return Prepared(self._record(event, kind), kind, versions[ranking[0]])

    @staticmethod
    def _ranking(body: ComparisonCreate, count: int) -> list[int]:
        pair = body.preferred_choice_index is not None or body.rejected_choice_index is not None
        if pair == (body.ranking is not None):
            raise FeedbackRejected(
                400, "invalid", "give either preferred_choice_index and rejected_choice_index, or a ranking", "ranking"
            )
        if body.ranking is not None:
            if sorted(body.ranking) != list(range(count)):
                raise FeedbackRejected(
                    400, "invalid", f"ranking must order every choice 0..{count - 1} exactly once", "ranking"
                )
            return list(body.ranking)
        preferred, rejected = body.preferred_choice_index, body.rejected_choice_index
        if preferred is None or rejected is None:
            raise FeedbackRejected(400, "invalid", "both preferred_choice_index and rejected_choice_index are needed")
        if preferred == rejected or max(preferred, rejected) >= count:
            raise FeedbackRejected(
                400, "invalid", f"preferred and rejected must be two different choices below {count}",
                "preferred_choice_index",
            )  # fmt: skip
        return [preferred, rejected]

    def prepare_pair(self, pair: PreferencePair, source: str, user_id: str) -> Prepared:
        """An offline preference pair (HH dialogues, or a prompt with two answers)."""
        try:
            if pair.messages is not None:
                if pair.prompt is not None:
                    raise MalformedDialogue("give the prompt either as 'prompt' or as 'messages', not both")
                prompt = [m.model_dump() for m in pair.messages]
                chosen, rejected = pair.chosen, pair.rejected
            elif pair.prompt is not None:
                prompt = [{"role": "user", "content": pair.prompt}]
                chosen, rejected = pair.chosen, pair.rejected
            else:
                prompt, chosen, rejected = split_pair(pair.chosen, pair.rejected)
        except MalformedDialogue as exc:
            raise FeedbackRejected(400, "invalid", str(exc), "pairs") from None
        digest = _digest(prompt, chosen, rejected)
        event = self._event(f"import-{digest[:32]}", user_id, "", f"import:{digest}", [])
        event.external_pair.CopyFrom(
            events_pb2.ExternalPair(
                prompt=[events_pb2.ChatMessage(**m) for m in prompt], chosen=chosen, rejected=rejected, source=source
            )
        )
        return Prepared(self._record(event, "import"), "import")

    # -- durable submission

    @staticmethod
    def _event(
        completion_id: str, user_id: str, version: str, key: str | None, versions: list[str]
    ) -> events_pb2.FeedbackEvent:
        event_id = new_event_id()
        return events_pb2.FeedbackEvent(
            event_id=event_id,
            created_at=timestamp_now(),
            schema_version=SCHEMA_VERSION,
            completion_id=completion_id,
            user_id=user_id,
            policy_version=version,
            idempotency_key=key or f"event:{event_id}",  # no client key: unique, so never a duplicate
            choice_policy_versions=versions,
        )

    @staticmethod
    def _record(event: events_pb2.FeedbackEvent, kind: str) -> OutboxRecord:
        return OutboxRecord(event.event_id, event.idempotency_key, event.completion_id, kind, event.SerializeToString())

    async def submit(self, prepared: Prepared, transport: str) -> Appended:
        """Append to the outbox; returns once the event is on disk."""
        return (await self.submit_many([prepared], transport))[0]

    async def submit_many(self, prepared: list[Prepared], transport: str) -> list[Appended]:
        """Append several events in one group commit; returns once all are on disk."""
        try:
            future = self.outbox.append_many([p.record for p in prepared])
        except OutboxFull as exc:
            raise FeedbackRejected(503, "outbox_full", f"feedback is not being accepted right now: {exc}",
                                   retry_after=5) from None  # fmt: skip
        try:
            appended = await asyncio.wrap_future(future)
        except sqlite3.Error as exc:  # disk full, an I/O error: nothing was stored, so the client may retry
            raise FeedbackRejected(503, "outbox_unavailable", f"feedback could not be stored right now ({exc})",
                                   retry_after=5) from None  # fmt: skip
        counts: Counter[tuple[str, ...]] = Counter()  # count first: one metric update per label set
        for item, result in zip(prepared, appended, strict=True):
            if result.duplicate:
                counts["duplicate", item.kind] += 1
                continue
            counts["accepted", item.kind] += 1
            if item.kind == "thumbs":
                counts["thumbs", item.policy_version, item.rating] += 1
            elif item.kind == "comparison":
                counts["comparison", item.policy_version] += 1
        for (what, *labels), count in counts.items():
            if what == "duplicate":
                self.metrics.duplicates.labels(*labels).inc(count)
            elif what == "accepted":
                self.metrics.accepted.labels(*labels, transport).inc(count)
            elif what == "thumbs":
                self.metrics.thumbs.labels(*labels).inc(count)
            else:
                self.metrics.comparisons.labels(*labels).inc(count)
        return appended

    def reject(self, kind: str, reason: str) -> None:
        self.metrics.rejected.labels(kind, reason).inc()
