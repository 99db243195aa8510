from typing import Any

from fastapi import APIRouter, Depends

from status_tracker import repository
from status_tracker.deps import ConnectionDep, require_api_key
from status_tracker.errors import NotFound
from status_tracker.models import Message, message_view

router = APIRouter(prefix="/v1", tags=["messages"], dependencies=[Depends(require_api_key)])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong API key (problem+json)"},
    404: {"description": "No such message (problem+json)"},
}


@router.get(
    "/messages/{id_or_sid}",
    response_model=Message,
    summary="A message, its current status and its full timeline",
    responses=PROBLEMS,
)
async def get_message(id_or_sid: str, connection: ConnectionDep) -> Message:
    """`id_or_sid` is Twilio's Message SID (`SM…`/`MM…`) or the service's own id (a UUID)."""
    message = await repository.get_message(connection, id_or_sid)
    if message is None:
        raise NotFound(f"No message {id_or_sid!r}.")
    events = await repository.list_events(connection, message["id"])
    return message_view(message, events)
