"""`GET /metrics`: Prometheus's text format, for an operations team's scraper."""

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from status_tracker import api_keys, metrics
from status_tracker.deps import SettingsDep
from status_tracker.errors import NotFound, Unauthorized

router = APIRouter(tags=["operations"])

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="MetricsToken",
    description="STATUS_TRACKER_METRICS_TOKEN, when it is set.",
)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Every metric, in Prometheus's text format",
            "content": {"text/plain": {}},
        },
        401: {"description": "STATUS_TRACKER_METRICS_TOKEN is set and was not sent (problem+json)"},
        404: {"description": "STATUS_TRACKER_METRICS=false (problem+json)"},
    },
)
async def prometheus_metrics(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    """Callbacks, ingest, final statuses by country and sender, sends, Twilio's API and
    reconciliation; with several workers, summed over all of them."""
    if not settings.metrics:
        raise NotFound("Metrics are turned off (STATUS_TRACKER_METRICS=false).")
    token = settings.metrics_token
    if token is not None:
        if credentials is None:
            raise Unauthorized("Send the metrics token as 'Authorization: Bearer <token>'.")
        if not api_keys.matches(credentials.credentials, [token.get_secret_value()]):
            raise Unauthorized("The metrics token is not valid.")
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
