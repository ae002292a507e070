"""The roll-out state over HTTP, for the operator page and scripts: read freely, change with the admin key."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from flywheel.auth import admin_key_matches
from flywheel.errors import APIError
from serving.rollout import PolicyReceiver
from serving.versions import RefusedVersion

router = APIRouter(prefix="/v1/policy", tags=["policy"])


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field("", max_length=128, description="Empty: the current canary.")
    reason: str = Field("", max_length=500)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class CanaryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(ge=0.0, le=1.0)


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=128)


def _receiver(request: Request) -> PolicyReceiver:
    receiver = getattr(request.app.state, "receiver", None)
    if receiver is None:
        raise APIError(503, "the engine is still loading", type_="service_unavailable", code="loading")
    return receiver


def _admin(request: Request, authorization: str | None) -> PolicyReceiver:
    if not admin_key_matches(authorization, request.app.state.settings.admin_key):
        raise APIError(401, "the admin key is required (Authorization: Bearer <key>)", type_="authentication_error")
    return _receiver(request)


def _result(receiver: PolicyReceiver, ok: bool, message: str) -> dict:
    if not ok:
        raise APIError(409, message, code="rollout_conflict")
    return {"ok": True, "message": message, "status": receiver.status()}


@router.get("")
async def policy_status(request: Request) -> dict:
    """Stable and canary versions, the canary fraction, what is loaded, refused and retired."""
    return _receiver(request).status()


@router.get("/versions")
async def policy_versions(request: Request) -> dict:
    """Every version in the model store with its state here and its round metrics."""
    return {"versions": _receiver(request).list_versions()}


@router.post("/promote")
async def promote(request: Request, body: PromoteBody, authorization: str | None = Header(None)) -> dict:
    receiver = _admin(request, authorization)
    return _result(receiver, *await receiver.promote(body.version, body.reason))


@router.post("/rollback")
async def rollback(request: Request, body: RollbackBody, authorization: str | None = Header(None)) -> dict:
    receiver = _admin(request, authorization)
    return _result(receiver, *await receiver.rollback(body.reason))


@router.post("/canary")
async def set_canary(request: Request, body: CanaryBody, authorization: str | None = Header(None)) -> dict:
    receiver = _admin(request, authorization)
    return _result(receiver, *await receiver.set_canary_fraction(body.fraction))


@router.post("/load")
async def load(request: Request, body: LoadBody, authorization: str | None = Header(None)) -> dict:
    receiver = _admin(request, authorization)
    try:
        await receiver.load(body.version)
    except RefusedVersion as exc:
        raise APIError(409, str(exc), code="version_refused") from None
    return {"ok": True, "message": f"{body.version} is loaded", "status": receiver.status()}
