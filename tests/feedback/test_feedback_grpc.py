"""FeedbackService over gRPC with the grpcio client: unary calls, bulk streaming, health."""

from unittest.mock import Mock

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedback.grpc_server import FeedbackServicer
from feedback.service import FeedbackService
from flywheel.auth import resolve_user
from flywheel.tokens import FeedbackToken
from flywheel.v1 import feedback_pb2, feedback_pb2_grpc
from tests.conftest import BOB_API_KEY, TEST_API_KEY, TEST_SECRET, TEST_USER

ALICE = (("authorization", f"Bearer {TEST_API_KEY}"),)
BOB = (("authorization", f"Bearer {BOB_API_KEY}"),)
SIGNER = FeedbackToken(TEST_SECRET)


@pytest.fixture(scope="module")
def stub(feedback_server):
    channel = grpc.insecure_channel(feedback_server.grpc_target)
    yield feedback_pb2_grpc.FeedbackServiceStub(channel)
    channel.close()


def thumbs(completion_id: str, index: int = 0, count: int = 1, **extra) -> feedback_pb2.SubmitThumbsRequest:
    token = SIGNER.issue(completion_id, index, count, TEST_USER, "base")
    return feedback_pb2.SubmitThumbsRequest(
        completion_id=completion_id, choice_index=index, rating="up", feedback_token=token, **extra
    )


def test_health_is_serving(feedback_server):
    with grpc.insecure_channel(feedback_server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "flywheel.v1.FeedbackService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_unary_thumbs_and_comparison(stub):
    result = stub.SubmitThumbs(thumbs("grpc-1", comment="fine", dimensions={"tone": 4}), metadata=ALICE)
    assert result.status == feedback_pb2.FEEDBACK_STATUS_ACCEPTED and result.event_id
    tokens = [SIGNER.issue("grpc-2", i, 2, TEST_USER, "base") for i in range(2)]
    comparison = feedback_pb2.SubmitComparisonRequest(
        completion_id="grpc-2", feedback_tokens=tokens, preferred_choice_index=1, rejected_choice_index=0
    )
    assert stub.SubmitComparison(comparison, metadata=ALICE).status == feedback_pb2.FEEDBACK_STATUS_ACCEPTED


def test_unary_and_bulk_corrections(stub):
    def rewrite(completion_id: str, index: int = 0, **extra) -> feedback_pb2.SubmitCorrectionRequest:
        token = SIGNER.issue(completion_id, index, 2, TEST_USER, "base")
        return feedback_pb2.SubmitCorrectionRequest(completion_id=completion_id, choice_index=index,
                                                    feedback_token=token, **extra)  # fmt: skip

    result = stub.SubmitCorrection(rewrite("fix-1", 1, text="Better.", comment="tighter"), metadata=ALICE)
    assert result.status == feedback_pb2.FEEDBACK_STATUS_ACCEPTED and result.event_id
    for request, metadata, code in [
        (rewrite("fix-2", text=" "), ALICE, grpc.StatusCode.INVALID_ARGUMENT),  # nothing rewritten
        (rewrite("fix-3"), ALICE, grpc.StatusCode.INVALID_ARGUMENT),  # no text at all
        (rewrite("fix-4", text="Better."), BOB, grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.SubmitCorrection(request, metadata=metadata)
        assert excinfo.value.code() == code
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert "text" in excinfo.value.details()  # the field is named
    items = [feedback_pb2.BulkSubmitRequest(correction=rewrite("fix-5", text="Kinder.")),
             feedback_pb2.BulkSubmitRequest(correction=rewrite("fix-6", text=""))]  # fmt: skip
    reply = stub.BulkSubmit(iter(items), metadata=ALICE)
    assert reply.accepted == 1 and reply.results[1].code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("request_", "metadata", "code"),
    [
        (feedback_pb2.SubmitThumbsRequest(completion_id="grpc-3", rating="up", feedback_token="fw1.x.y"), ALICE,
         grpc.StatusCode.PERMISSION_DENIED),
        (thumbs("grpc-4"), BOB, grpc.StatusCode.PERMISSION_DENIED),
        (feedback_pb2.SubmitThumbsRequest(completion_id="grpc-5", rating="sideways",
                                          feedback_token=SIGNER.issue("grpc-5", 0, 1, TEST_USER, "base")),
         ALICE, grpc.StatusCode.INVALID_ARGUMENT),
        (thumbs("grpc-6", flags=["nonsense"]), ALICE, grpc.StatusCode.INVALID_ARGUMENT),
        (feedback_pb2.SubmitThumbsRequest(completion_id="grpc-7", rating="up", feedback_token="fw1.é.x"), ALICE,
         grpc.StatusCode.PERMISSION_DENIED),
    ],
)  # fmt: skip
def test_unary_rejections_carry_status_codes(stub, request_, metadata, code):
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.SubmitThumbs(request_, metadata=metadata)
    assert excinfo.value.code() == code
    assert excinfo.value.details()


def test_bulk_stream_answers_each_event_in_order(stub):
    items = [feedback_pb2.BulkSubmitRequest(thumbs=thumbs(f"bulk-{i}", idempotency_key=f"bulk-{i}")) for i in range(50)]
    items[10] = feedback_pb2.BulkSubmitRequest(
        thumbs=feedback_pb2.SubmitThumbsRequest(completion_id="bulk-x", rating="up", feedback_token="forged")
    )
    items[20] = feedback_pb2.BulkSubmitRequest()
    items[30] = feedback_pb2.BulkSubmitRequest(  # a non-ASCII token is one rejection, not the stream's end
        thumbs=feedback_pb2.SubmitThumbsRequest(completion_id="bulk-y", rating="up", feedback_token="fw1.é.sïg")
    )
    reply = stub.BulkSubmit(iter(items), metadata=ALICE)
    assert len(reply.results) == 50
    assert reply.accepted == 47 and reply.rejected == 3
    assert reply.results[10].status == feedback_pb2.FEEDBACK_STATUS_REJECTED
    assert reply.results[10].code == reply.results[30].code == "PERMISSION_DENIED"
    assert reply.results[20].code == "INVALID_ARGUMENT"
    assert all(r.event_id for i, r in enumerate(reply.results) if i not in (10, 20, 30))
    again = stub.BulkSubmit(iter(items[:5]), metadata=ALICE)  # retries: the same events
    assert [r.event_id for r in again.results] == [r.event_id for r in reply.results[:5]]


def test_bulk_stream_stops_reading_at_its_limit(broker, tmp_path):
    from tests.conftest import feedback_env, start_feedback, stop_process

    server = start_feedback(tmp_path, feedback_env(tmp_path, broker.bootstrap, FLYWHEEL_MAX_BULK_EVENTS="5"))
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            items = [feedback_pb2.BulkSubmitRequest(thumbs=thumbs(f"limit-{i}")) for i in range(8)]
            reply = stub.BulkSubmit(iter(items), metadata=ALICE)
        assert len(reply.results) == 5 and reply.accepted == 5  # the client sees three were not read
    finally:
        stop_process(server.process)


def test_anonymous_ipv6_callers_are_told_apart_and_named_as_over_http():
    servicer = FeedbackServicer(Mock(spec=FeedbackService), {}, allow_anonymous=True)

    def user(peer: str) -> str:
        context = Mock(spec=grpc.aio.ServicerContext)
        context.invocation_metadata.return_value = ()
        context.peer.return_value = peer
        return servicer._user(context)

    local, other = user("ipv6:%5B::1%5D:5000"), user("ipv6:%5B2001:db8::7%5D:5000")  # gRPC escapes the brackets
    assert local != other
    assert local == user("ipv6:[::1]:6000") == resolve_user(None, {}, True, "::1")  # HTTP's client.host is '::1'
    assert user("ipv4:10.0.0.7:5000") == resolve_user(None, {}, True, "10.0.0.7")
