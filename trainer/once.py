"""`flywheel train --once`: one round on the dataset, in this process or by the trainer that holds it.

One trainer per dataset (trainer/lock.py): when a trainer service holds the data directory, the
round is asked of it over gRPC (`TriggerRound` with `wait`), so the two never train side by side;
with none, the round runs here, holding the lock itself.
"""

from __future__ import annotations

import dataclasses
import logging

from flywheel.settings import TrainerSettings
from trainer.lock import DatasetLocked

log = logging.getLogger(__name__)

SUCCESS = ("published", "reward_updated")


def run_once(settings: TrainerSettings, base_model: str, reward_only: bool) -> dict:
    """The round's result as a dict (round, outcome, reason, version, metrics, ran_by)."""
    from trainer.service import TrainerService

    try:
        service = TrainerService(settings, base_model)
    except DatasetLocked as exc:
        if exc.holder is None or not exc.holder.grpc_address:
            raise  # another --once (or a trainer still starting): nothing to ask
        log.info("the trainer at %s holds the dataset; asking it for the round", exc.holder.grpc_address)
        return {**remote_round(exc.holder.grpc_address, settings, reward_only), "ran_by": exc.holder.grpc_address}
    log.info("trainer configuration: %s", settings.describe())
    try:
        service.catch_up()
        result = service.run_round(reward_only=reward_only)
        service.announcer.announce_pending(service.context.policies)
    finally:
        service.stop()
    return {**dataclasses.asdict(result), "ran_by": "this process"}


def remote_round(address: str, settings: TrainerSettings, reward_only: bool) -> dict:
    """Ask the trainer service at `address` for a round and wait for its result (no deadline: rounds are long)."""
    import grpc

    from flywheel.v1 import trainer_pb2, trainer_pb2_grpc
    from trainer.context import RoundResult

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
    return dataclasses.asdict(
        RoundResult(summary.round, summary.outcome, summary.reason, summary.version, dict(summary.metrics))
    )
