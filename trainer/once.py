"""`flywheel train --once`: one round on the dataset, in this process or by the trainer that holds it.

One trainer per dataset (trainer/lock.py): when a trainer service holds the data directory, the
round is asked of it over gRPC (`TriggerRound` with `wait`), so the two never train side by side;
with none, the round runs here, holding the lock itself.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TypedDict

from flywheel.settings import TrainerSettings
from trainer.context import Outcome, RoundResult
from trainer.lock import DatasetLocked

log = logging.getLogger(__name__)

SUCCESS: tuple[Outcome, ...] = ("published", "reward_updated")


class OnceResult(TypedDict):
    """RoundResult's fields and who ran the round: a dict, as the CLI prints it as JSON."""

    round: int
    outcome: Outcome
    reason: str
    version: str
    metrics: dict[str, float]
    ran_by: str  # "this process", or the gRPC address of the trainer service that ran it


def once_result(result: RoundResult, ran_by: str) -> OnceResult:
    return OnceResult(**dataclasses.asdict(result), ran_by=ran_by)


def run_once(settings: TrainerSettings, base_model: str, reward_only: bool) -> OnceResult:
    """Run one round here, or ask the trainer service that holds the dataset for it."""
    from trainer.service import TrainerService

    try:
        service = TrainerService(settings, base_model)
    except DatasetLocked as exc:
        if exc.holder is None or not exc.holder.grpc_address:
            raise  # another --once (or a trainer still starting): nothing to ask
        log.info("the trainer at %s holds the dataset; asking it for the round", exc.holder.grpc_address)
        return once_result(remote_round(exc.holder.grpc_address, settings, reward_only), exc.holder.grpc_address)
    log.info("trainer configuration: %s", settings.describe())
    try:
        service.catch_up()
        service.context.catch_up = service.catch_up  # the AI judge's verdicts come back through Kafka
        result = service.run_round(reward_only=reward_only)
        service.announcer.announce_pending(service.context.policies)
    finally:
        service.stop()
    return once_result(result, "this process")


def remote_round(address: str, settings: TrainerSettings, reward_only: bool) -> RoundResult:
    """Ask the trainer service at `address` for a round and wait for its result (no deadline: rounds are long)."""
    import grpc

    from flywheel.v1 import trainer_pb2, trainer_pb2_grpc

    metadata = [("authorization", f"Bearer {settings.admin_key.get_secret_value()}")]
    with grpc.insecure_channel(address) as channel:
        try:
            response = trainer_pb2_grpc.TrainerServiceStub(channel).TriggerRound(
                trainer_pb2.TriggerRoundRequest(reward_only=reward_only, wait=True), metadata=metadata
            )
        except grpc.RpcError as exc:
            raise RuntimeError(f"the trainer at {address} holds the dataset but did not run the round: "
                               f"{exc.details()}") from None  # fmt: skip
    summary = response.result  # the same fields, so both ways print the same JSON
    return RoundResult(summary.round, summary.outcome, summary.reason, summary.version, dict(summary.metrics))
