"""FeedbackService with a real outbox (no relay, no broker): which submissions are one event."""

from __future__ import annotations

from feedback.metrics import FeedbackMetrics
from feedback.outbox import Outbox, OutboxLedger
from feedback.protocol import FeedbackCreate
from feedback.service import FeedbackService
from flywheel.limits import RateLimiter
from flywheel.settings import FeedbackSettings
from flywheel.tokens import FeedbackToken
from flywheel.v1 import events_pb2

SIGNER = FeedbackToken("s")


def thumbs(rating: str, **extra) -> FeedbackCreate:
    token = SIGNER.issue("chatcmpl-1", 0, 1, "alice", "base")
    return FeedbackCreate(completion_id="chatcmpl-1", choice_index=0, rating=rating, feedback_token=token, **extra)


async def submit_all(tmp_path, bodies: list[FeedbackCreate]) -> tuple[list, list[int]]:
    outbox = Outbox(tmp_path / "outbox.sqlite", max_pending=100)
    settings = FeedbackSettings(data_dir=tmp_path, feedback_token_secret="s")
    service = FeedbackService(SIGNER, outbox, FeedbackMetrics(), settings, RateLimiter(100, 100))
    try:
        results = [await service.submit(service.prepare_thumbs(body, "alice"), "rest") for body in bodies]
    finally:
        outbox.close()
    ledger = OutboxLedger(tmp_path / "outbox.sqlite")
    stored = [events_pb2.FeedbackEvent.FromString(e.payload).thumbs.rating for e in ledger.unpublished(100)]
    ledger.close()
    return results, stored


async def test_a_change_of_mind_back_to_the_first_rating_is_a_new_event(tmp_path):
    results, stored = await submit_all(tmp_path, [thumbs("up"), thumbs("down"), thumbs("up")])
    assert [r.duplicate for r in results] == [False, False, False]
    assert len({r.event_id for r in results}) == 3
    assert stored == [events_pb2.RATING_UP, events_pb2.RATING_DOWN, events_pb2.RATING_UP]  # the latest is up


async def test_a_retry_with_the_clients_key_is_the_first_event(tmp_path):
    bodies = [thumbs("up", idempotency_key="click-1"), thumbs("up", idempotency_key="click-1"),
              thumbs("down", idempotency_key="click-2"), thumbs("up", idempotency_key="click-3")]  # fmt: skip
    results, stored = await submit_all(tmp_path, bodies)
    assert [r.duplicate for r in results] == [False, True, False, False]
    assert results[1].event_id == results[0].event_id
    assert stored == [events_pb2.RATING_UP, events_pb2.RATING_DOWN, events_pb2.RATING_UP]
