"""The abuse suite's fuzzing: every gRPC service (feedback, policy, trainer) with random, malformed and
oversized requests, and schemathesis on the trainer's HTTP API (serving's and feedback's are in
tests/serving and tests/feedback). Each hole found by the review has its own test beside its code.

Every method of each service gets well-formed messages with random field values (empty, huge,
negative, NaN, unknown enum numbers, path-like and non-ASCII strings), bytes that are no message at
all, and a message past the size limit; with and without the right key. The answer is always a
status that says what is wrong, never UNKNOWN (an exception escaped a handler) or INTERNAL other than
grpc's own "could not deserialize", and every service still answers its health check afterwards.
"""

from __future__ import annotations

import math
import random
import re

import grpc
import pytest
from google.protobuf import descriptor as pb
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.broker import Broker
from flywheel.v1 import feedback_pb2, policy_pb2, trainer_pb2
from tests.conftest import ADMIN_KEY, TEST_API_KEY, free_port, run_schemathesis, start_trainer
from tests.serving.versions import start_replica

pytestmark = pytest.mark.slow

EXAMPLES = 40  # per method and key
STRINGS = ["", "x" * 70_000, "../../etc/passwd", "/absolute", "fw1.\u00e9\u00e9.\u2603", "\u0000", "v1", "base",
           "a" * 300, "🙂" * 50]  # fmt: skip
NUMBERS = [0, -1, 1, 2**31 - 1, -(2**31), 10**9]
FLOATS = [0.0, -1.0, 0.5, 1.0, 2.0, math.nan, math.inf, -math.inf, 1e308]
BAD_STATUS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.DATA_LOSS}


def value(field: pb.FieldDescriptor, rng: random.Random, depth: int):
    kind = field.type
    if kind == pb.FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS)
    if kind == pb.FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 8, 1000]))
    if kind == pb.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (pb.FieldDescriptor.TYPE_FLOAT, pb.FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(FLOATS)
    if kind == pb.FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [99])
    if kind in (pb.FieldDescriptor.TYPE_UINT32, pb.FieldDescriptor.TYPE_UINT64, pb.FieldDescriptor.TYPE_FIXED32,
                pb.FieldDescriptor.TYPE_FIXED64):  # fmt: skip
        return abs(rng.choice(NUMBERS))
    return rng.choice(NUMBERS)


def fill(message, rng: random.Random, depth: int = 0):
    """`message` with a random subset of its fields set to random values (nested up to two levels)."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        target = getattr(message, field.name) if field.type == pb.FieldDescriptor.TYPE_MESSAGE else None
        if field.type == pb.FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name
            key_field, value_field = entry["key"], entry["value"]
            for _ in range(rng.randint(0, 3)):
                if value_field.type == pb.FieldDescriptor.TYPE_MESSAGE:
                    continue
                target[value(key_field, rng, depth)] = value(value_field, rng, depth)
        elif field.type == pb.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2:
                continue
            if field.is_repeated:
                for _ in range(rng.randint(0, 3)):
                    fill(target.add(), rng, depth + 1)
            else:
                fill(target, rng, depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend(value(field, rng, depth) for _ in range(rng.randint(0, 20)))
        else:
            setattr(message, field.name, value(field, rng, depth))
    return message


def requests(method: pb.MethodDescriptor, rng: random.Random) -> list[bytes]:
    request_class = pb_class(method.input_type)
    payloads = [fill(request_class(), rng).SerializeToString() for _ in range(EXAMPLES)]
    payloads += [b"\xff\xff\xff", rng.randbytes(64), request_class(**oversized(request_class)).SerializeToString()]
    return payloads


def oversized(request_class) -> dict:
    single = [f for f in request_class.DESCRIPTOR.fields if not f.is_repeated]
    strings = [f for f in single if f.type == pb.FieldDescriptor.TYPE_STRING]
    return {strings[0].name: "x" * 5_000_000} if strings else {}


def pb_class(descriptor: pb.Descriptor):
    return message_factory.GetMessageClass(descriptor)


def fuzz(target: str, service: pb.ServiceDescriptor, keys: list[str], seed: int) -> list[str]:
    """Every method with every payload and key; the answers that show an escaped exception."""
    rng = random.Random(seed)
    problems = []
    with grpc.insecure_channel(target) as channel:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            for key in keys:
                metadata = [("authorization", f"Bearer {key}")] if key else []
                for payload in requests(method, rng):
                    code, detail = call(channel, path, method, payload, metadata)
                    if code in BAD_STATUS or (code == grpc.StatusCode.INTERNAL and "deserializ" not in detail):
                        problems.append(f"{method.name} ({len(payload)} bytes, key {bool(key)}): {code} {detail}")
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    return problems


def call(channel, path, method, payload: bytes, metadata) -> tuple[grpc.StatusCode, str]:
    identity = lambda data: data  # noqa: E731 - raw bytes both ways
    try:
        if method.client_streaming:
            stub = channel.stream_unary(path, request_serializer=identity, response_deserializer=identity)
            stub(iter([payload, payload]), metadata=metadata, timeout=30)
        else:
            stub = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
            stub(payload, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_the_feedback_service_answers_every_fuzzed_request_with_a_status(feedback_server):
    service = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"]
    assert fuzz(feedback_server.grpc_target, service, ["", TEST_API_KEY, "unknown-key"], seed=1) == []


def test_the_policy_service_answers_every_fuzzed_request_with_a_status(tiny_model, tmp_path):
    # A replica and broker of its own: fuzzed decisions with the admin key go out on the policy topic.
    broker = Broker(port=free_port()).start()
    replica = start_replica(tiny_model, tmp_path, broker.bootstrap)
    try:
        service = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]
        target = f"127.0.0.1:{replica.env['FLYWHEEL_GRPC_PORT']}"
        assert fuzz(target, service, ["", ADMIN_KEY, "wrong"], seed=2) == []
    finally:
        replica.stop()
        broker.stop()


@pytest.fixture(scope="module")
def trainer(tiny_model, broker, tmp_path_factory):
    trainer = start_trainer(tmp_path_factory.mktemp("abuse-trainer"), broker.bootstrap, tiny_model,
                            FLYWHEEL_ROUNDS__MIN_NEW_FEEDBACK="1000000")  # fmt: skip
    yield trainer
    trainer.stop()


def test_the_trainer_service_answers_every_fuzzed_request_with_a_status(trainer):
    service = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]
    # No admin key: a fuzzed TriggerRound with the key would start real rounds; the key's checks
    # and the controls' answers are tests/trainer/test_trainer_process.py's.
    assert fuzz(trainer.grpc, service, ["", "wrong"], seed=3) == []


def test_the_trainers_http_api_gives_no_server_error(trainer):
    result = run_schemathesis(f"{trainer.url}/openapi.json", max_examples=60)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and int(generated.group(1)) >= 20, result.stdout[-3000:]  # it really asked
