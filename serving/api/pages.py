"""The chat page at `/` and the operator page at `/ops`: static files and the configuration they read.

The pages are plain HTML, CSS and JavaScript under serving/static/ (no build step). The chat page
calls the chat API on this origin and the feedback service, a separate process, at
`feedback_public_url`; the operator page calls the roll-out API here and the trainer at
`trainer_public_url`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from flywheel.errors import APIError

router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
# Served by name only (a flat folder known at start-up), so no request can reach outside it.
_STATIC_FILES = {path.name: path for path in STATIC_DIR.iterdir() if path.suffix in _MEDIA_TYPES}
_NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


class PageConfig(BaseModel):
    feedback_url: str
    trainer_url: str
    model: str
    anonymous: bool


def _page_headers(other_service_url: str) -> dict[str, str]:
    # Model output is only ever set as text; the policy is a second line of defence against injection.
    parts = urlsplit(other_service_url)
    other_origin = f"{parts.scheme}://{parts.netloc}"
    policy = (
        f"default-src 'self'; connect-src 'self' {other_origin}; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
    return {**_NO_CACHE, "Content-Security-Policy": policy, "Referrer-Policy": "no-referrer"}


@router.get("/", include_in_schema=False)
async def chat_page(request: Request) -> FileResponse:
    settings = request.app.state.settings
    return FileResponse(
        STATIC_DIR / "chat.html", media_type="text/html", headers=_page_headers(settings.feedback_public_url)
    )


@router.get("/ops", include_in_schema=False)
async def ops_page(request: Request) -> FileResponse:
    settings = request.app.state.settings
    return FileResponse(
        STATIC_DIR / "ops.html", media_type="text/html", headers=_page_headers(settings.trainer_public_url)
    )


@router.get("/config.json", response_model=PageConfig, include_in_schema=False)
async def page_config(request: Request) -> PageConfig:
    settings = request.app.state.settings
    return PageConfig(
        feedback_url=settings.feedback_public_url.rstrip("/"),
        trainer_url=settings.trainer_public_url.rstrip("/"),
        model=settings.served_model_name,
        anonymous=settings.allow_anonymous,
    )


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    path = _STATIC_FILES.get(name)
    if path is None:
        raise APIError(404, f"no static file named {name!r}", code="not_found")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_NO_CACHE)
