"""A phone number's data: erasure on a data subject's request."""

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from status_tracker import erasure
from status_tracker.deps import ConnectionDep, require_admin
from status_tracker.errors import Unprocessable

router = APIRouter(prefix="/v1/numbers", tags=["numbers"], dependencies=[Depends(require_admin)])


class Erasure(BaseModel):
    id: int
    number_sha256: str = Field(description="SHA-256 of the number in E.164 form: all that is kept")
    erased_at: datetime
    erased_by: str | None = Field(description="The API key's name, when keys have names")
    counts: dict[str, int] = Field(description="Rows changed, by table")


@router.delete(
    "/{number}",
    response_model=Erasure,
    summary="Erase every stored trace of a phone number",
    responses={
        401: {"description": "Missing or wrong API key (problem+json)"},
        422: {"description": "Not a phone number (problem+json)"},
    },
)
async def erase_number(number: str, connection: ConnectionDep) -> Erasure:
    """Blanks the number, on every channel and as redacted, in messages, event fields, replies,
    reconciliation findings and idempotency records, and the bodies and media of its messages;
    records the erasure with only a hash of the number. The event log keeps its events, with
    those values blanked. Opt-outs are kept (hashed) so that the number stays opted out. Erasing
    again is harmless (zero counts)."""
    try:
        record = await erasure.erase(connection, number, erased_by=None)
    except erasure.InvalidNumber as error:
        raise Unprocessable(
            str(error), errors=[{"field": "path.number", "message": str(error)}]
        ) from error
    return Erasure.model_validate(dict(record))
