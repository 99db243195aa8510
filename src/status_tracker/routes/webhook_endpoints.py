"""`/v1/webhook-endpoints`: where the service tells the user's own systems what happened."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from status_tracker import delivery, outbox
from status_tracker.deps import ConnectionDep, SettingsDep, require_api_key
from status_tracker.errors import NotFound, Unprocessable
from status_tracker.ids import uuid7
from status_tracker.routes.query import window

router = APIRouter(
    prefix="/v1/webhook-endpoints",
    tags=["webhooks"],
    dependencies=[Depends(require_api_key)],
    responses={401: {"description": "Missing or wrong API key (problem+json)"}},
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such endpoint"}}

EventType = Literal[
    "message.status_changed", "message.final", "message.inbound", "reconciliation.completed"
]


class NewEndpoint(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://example.com/hooks/sms", "event_types": ["message.final"]}]
        },
    )

    url: AnyHttpUrl = Field(description="http(s); not a private address unless allowed")
    description: str | None = Field(default=None, max_length=500)
    event_types: list[EventType] = Field(
        default_factory=lambda: list(get_args(EventType)),
        min_length=1,
        description="Default: every type",
    )
    reference_prefix: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Only messages whose `reference` starts with this",
    )


class EndpointChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl | None = None
    description: str | None = Field(default=None, max_length=500)
    event_types: list[EventType] | None = Field(default=None, min_length=1)
    reference_prefix: str | None = Field(default=None, max_length=200)
    enabled: bool | None = Field(
        default=None, description="true enables a disabled endpoint again; false pauses it"
    )


class Endpoint(BaseModel):
    id: UUID
    url: str
    description: str | None
    event_types: list[str]
    reference_prefix: str | None
    enabled: bool
    disabled_reason: str | None = Field(description="Why the service disabled it (410, failures)")
    failing_since: datetime | None = Field(description="Every attempt failed since then")
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="Until then, the secret a rotation replaced signs too"
    )


class EndpointWithSecret(Endpoint):
    secret: str = Field(description="`whsec_…`: shown once, keep it")


class Attempt(BaseModel):
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    response_excerpt: str | None = Field(description="The first 256 bytes of the answer")
    error: str | None


class Delivery(BaseModel):
    id: int
    event_id: int
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt")
    event_type: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[Attempt]


class Replayed(BaseModel):
    deliveries: int = Field(description="Events of the window queued to be delivered again")


async def _checked_url(url: AnyHttpUrl, settings: SettingsDep) -> str:
    try:
        await delivery.check_destination(str(url), settings.webhooks_allow_private)
    except delivery.UnsafeDestination as unsafe:
        message = str(unsafe)
        raise Unprocessable(
            f"body.url: {message}", errors=[{"field": "body.url", "message": message}]
        ) from unsafe
    return str(url)


@router.post(
    "",
    status_code=201,
    response_model=EndpointWithSecret,
    summary="Register an endpoint; its signing secret is in this answer only",
    responses={422: {"description": "Invalid, or a private address (problem+json)"}},
)
async def create_endpoint(
    endpoint: NewEndpoint, connection: ConnectionDep, settings: SettingsDep
) -> EndpointWithSecret:
    url = await _checked_url(endpoint.url, settings)
    secret = delivery.new_secret()
    row = await outbox.create_endpoint(
        connection,
        endpoint_id=uuid7(datetime.now(UTC)),
        url=url,
        description=endpoint.description,
        event_types=list(dict.fromkeys(endpoint.event_types)),
        reference_prefix=endpoint.reference_prefix,
        secret=secret,
    )
    return EndpointWithSecret(**dict(row), secret=secret)


@router.get("", response_model=list[Endpoint], summary="Every endpoint, oldest first")
async def list_endpoints(connection: ConnectionDep) -> list[Endpoint]:
    return [Endpoint(**dict(row)) for row in await outbox.list_endpoints(connection)]


@router.get("/{endpoint_id}", response_model=Endpoint, responses=NOT_FOUND, summary="An endpoint")
async def get_endpoint(endpoint_id: UUID, connection: ConnectionDep) -> Endpoint:
    row = await outbox.get_endpoint(connection, endpoint_id)
    if row is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.")
    return Endpoint(**dict(row))


@router.patch(
    "/{endpoint_id}",
    response_model=Endpoint,
    responses=NOT_FOUND,
    summary="Change an endpoint, or enable it again",
)
async def update_endpoint(
    endpoint_id: UUID, changes: EndpointChanges, connection: ConnectionDep, settings: SettingsDep
) -> Endpoint:
    values = changes.model_dump(exclude_unset=True)
    if values.get("url") is not None:
        values["url"] = await _checked_url(changes.url, settings)  # type: ignore[arg-type]
    if "event_types" in values:
        values["event_types"] = list(dict.fromkeys(values["event_types"] or ()))
        if not values["event_types"]:
            raise Unprocessable("event_types: give at least one event type")
    if values.get("url", "") is None or values.get("enabled", False) is None:
        raise Unprocessable("url and enabled cannot be null")
    if values.get("reference_prefix") == "":
        values["reference_prefix"] = None
    row = (
        await outbox.update_endpoint(connection, endpoint_id, values)
        if values
        else await outbox.get_endpoint(connection, endpoint_id)
    )
    if row is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.")
    return Endpoint(**dict(row))


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    responses=NOT_FOUND,
    summary="Remove an endpoint, with its pending deliveries and history",
)
async def delete_endpoint(endpoint_id: UUID, connection: ConnectionDep) -> Response:
    if not await outbox.delete_endpoint(connection, endpoint_id):
        raise NotFound(f"No webhook endpoint {endpoint_id}.")
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    responses=NOT_FOUND,
    summary="A new signing secret; the old one keeps signing too for 24 h",
)
async def rotate_secret(endpoint_id: UUID, connection: ConnectionDep) -> EndpointWithSecret:
    secret = delivery.new_secret()
    row = await outbox.rotate_secret(
        connection, endpoint_id, secret, delivery.ROTATION_OVERLAP_SECONDS
    )
    if row is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.")
    return EndpointWithSecret(**dict(row), secret=secret)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=list[Delivery],
    responses=NOT_FOUND,
    summary="Deliveries to an endpoint, newest first, with every attempt",
)
async def list_deliveries(
    endpoint_id: UUID,
    connection: ConnectionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, description="Deliveries older than this id")] = None,
) -> list[Delivery]:
    if await outbox.get_endpoint(connection, endpoint_id) is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.")
    rows = await outbox.list_deliveries(connection, endpoint_id, limit, before)
    return [Delivery(**dict(row), webhook_id=delivery.webhook_id(row["event_id"])) for row in rows]


@router.post(
    "/{endpoint_id}/replay",
    status_code=202,
    response_model=Replayed,
    responses={**NOT_FOUND, 400: {"description": "A time without a zone (problem+json)"}},
    summary="Deliver every event of a window again (default: the last 24 h)",
)
async def replay(
    endpoint_id: UUID,
    connection: ConnectionDep,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Replayed:
    since, until = window(since, until)
    if await outbox.get_endpoint(connection, endpoint_id) is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.")
    return Replayed(deliveries=await outbox.replay(connection, endpoint_id, since, until))
