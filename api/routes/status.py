"""Liveness: `GET /status/heartbeat` answers 204 without touching Redis or Postgres."""

from fastapi import APIRouter, Response

router = APIRouter(prefix="/status", tags=["status"])


@router.get("/heartbeat", status_code=204, response_class=Response)
async def heartbeat() -> Response:
    """Answer 204 while the process serves requests."""
    return Response(status_code=204)
