"""HTTP routes of the feedback path: parse, call FeedbackService, map the result."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from feedback.protocol import (
    ComparisonCreate,
    CorrectionCreate,
    FeedbackAccepted,
    FeedbackCreate,
    ImportAccepted,
    PreferenceImport,
)
from feedback.service import FeedbackRejected, FeedbackService
from flywheel.auth import admin_key_matches
from flywheel.errors import APIError, ErrorResponse
from flywheel.http import caller_id

router = APIRouter()
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 429, 503)}


def feedback_service(request: Request) -> FeedbackService:
    return request.app.state.feedback


def _accepted(prepared, appended) -> JSONResponse:
    # A Response skips FastAPI's re-validation of the return value on this hot path; the
    # fields are those of FeedbackAccepted, which documents the route.
    return JSONResponse(
        {"event_id": appended.event_id, "idempotency_key": prepared.record.idempotency_key,
         "duplicate": appended.duplicate},
        status_code=202,
    )  # fmt: skip


@router.post("/v1/feedback", status_code=202, response_model=FeedbackAccepted, responses=_ERRORS)
async def create_feedback(body: FeedbackCreate, request: Request, authorization: str | None = Header(default=None)):
    service = feedback_service(request)
    prepared = service.prepare_thumbs(body, caller_id(request, authorization))
    return _accepted(prepared, await service.submit(prepared, "rest"))


@router.post("/v1/comparisons", status_code=202, response_model=FeedbackAccepted, responses=_ERRORS)
async def create_comparison(body: ComparisonCreate, request: Request, authorization: str | None = Header(default=None)):
    service = feedback_service(request)
    prepared = service.prepare_comparison(body, caller_id(request, authorization))
    return _accepted(prepared, await service.submit(prepared, "rest"))


@router.post("/v1/corrections", status_code=202, response_model=FeedbackAccepted, responses=_ERRORS)
async def create_correction(body: CorrectionCreate, request: Request, authorization: str | None = Header(default=None)):
    """A rewrite of one answer: the trainer learns it as a demonstration and as a pair over the original."""
    service = feedback_service(request)
    prepared = service.prepare_correction(body, caller_id(request, authorization))
    return _accepted(prepared, await service.submit(prepared, "rest"))


@router.post("/v1/preferences/import", status_code=202, response_model=ImportAccepted, responses=_ERRORS)
async def import_preferences(
    body: PreferenceImport, request: Request, authorization: str | None = Header(default=None)
):
    if not admin_key_matches(authorization, request.app.state.settings.admin_key):
        raise APIError(401, "the import route needs the admin key (Authorization: Bearer <admin key>)",
                       type_="authentication_error", code="invalid_admin_key")  # fmt: skip
    service = feedback_service(request)
    result = ImportAccepted(accepted=0, duplicates=0)
    prepared_all = []
    for index, pair in enumerate(body.pairs):
        try:
            prepared_all.append(service.prepare_pair(pair, body.source, "import"))
        except FeedbackRejected as exc:
            service.reject("import", exc.reason)
            result.rejected.append({"index": index, "message": exc.message})
    appended = await service.submit_many(prepared_all, "rest") if prepared_all else []
    result.duplicates = sum(a.duplicate for a in appended)
    result.accepted = len(appended) - result.duplicates
    return result
