"""PolicyService over gRPC: the roll-out control plane, a thin shell around PolicyReceiver.

Every call needs the admin key ("authorization: Bearer <key>" metadata).
"""

from __future__ import annotations

import logging

import grpc
from pydantic import SecretStr

from flywheel.grpc_server import require_admin, start_grpc_server
from flywheel.v1 import policy_pb2, policy_pb2_grpc
from serving.rollout import PolicyReceiver
from serving.versions import RefusedVersion

log = logging.getLogger(__name__)

SERVICE_NAME = "flywheel.v1.PolicyService"


def version_message(entry: dict) -> policy_pb2.PolicyVersionInfo:
    info = policy_pb2.PolicyVersionInfo(
        version=entry["version"],
        parent_version=entry.get("parent_version", ""),
        state=entry["state"],
        kind=entry.get("kind", ""),
        algorithm=entry.get("algorithm", ""),
    )
    for key, value in entry.get("metrics", {}).items():
        if isinstance(value, int | float):
            info.metrics[key] = float(value)
    return info


def status_message(receiver: PolicyReceiver) -> policy_pb2.GetStatusResponse:
    status = receiver.status()
    return policy_pb2.GetStatusResponse(
        stable_version=status["stable_version"],
        canary_version=status["canary_version"],
        canary_fraction=status["canary_fraction"],
        base_model=receiver.settings.policy_version,
        loaded=[version_message(entry) for entry in status["loaded"]],
        replica_id=status["replica_id"],
    )


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, receiver: PolicyReceiver, admin_key: SecretStr) -> None:
        self.receiver = receiver
        self.admin_key = admin_key

    async def _authorise(self, context: grpc.aio.ServicerContext) -> None:
        await require_admin(context, self.admin_key)

    def _action(self, ok: bool, message: str) -> policy_pb2.PolicyActionResponse:
        return policy_pb2.PolicyActionResponse(ok=ok, message=message, status=status_message(self.receiver))

    async def GetStatus(self, request, context):
        await self._authorise(context)
        return status_message(self.receiver)

    async def ListVersions(self, request, context):
        await self._authorise(context)
        entries = self.receiver.list_versions()
        return policy_pb2.ListVersionsResponse(versions=[version_message(entry) for entry in entries])

    async def LoadVersion(self, request, context):
        await self._authorise(context)
        if not request.version:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "version is required")
        try:
            await self.receiver.load(request.version)
        except RefusedVersion as exc:
            return self._action(False, str(exc))
        return self._action(True, f"{request.version} is loaded (pin it with policy_version)")

    async def Promote(self, request, context):
        await self._authorise(context)
        return self._action(*await self.receiver.promote(request.version, request.reason))

    async def Rollback(self, request, context):
        await self._authorise(context)
        return self._action(*await self.receiver.rollback(request.reason))

    async def SetCanaryFraction(self, request, context):
        await self._authorise(context)
        return self._action(*await self.receiver.set_canary_fraction(request.fraction))


async def start_policy_server(receiver: PolicyReceiver, host: str, port: int, admin_key: SecretStr) -> grpc.aio.Server:
    servicer = PolicyServicer(receiver, admin_key)
    return await start_grpc_server(
        lambda server: policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server), SERVICE_NAME, host, port
    )
