"""`/v1/accounts`: the Twilio accounts this service signs, sends and reconciles for (admin)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from status_tracker import accounts
from status_tracker.accounts import ACCOUNT_SID_PATTERN, Account
from status_tracker.deps import AccountsDep, ConnectionDep, SecretBoxDep, require_admin
from status_tracker.errors import Conflict, NotFound

router = APIRouter(prefix="/v1/accounts", tags=["accounts"], dependencies=[Depends(require_admin)])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong API key (problem+json)"},
    403: {"description": "Not an admin key bound to no account (problem+json)"},
}
SidPath = Annotated[str, Path(pattern=ACCOUNT_SID_PATTERN)]
SENDER_PATTERN = r"^(whatsapp:|rcs:|messenger:)?\+[1-9][0-9]{6,14}$|^[A-Za-z0-9 ]{1,11}$"


class AccountView(BaseModel):
    """An account as the API shows it: never its secrets."""

    sid: str
    friendly_name: str | None
    rotating: bool = Field(description="A secondary auth token is accepted beside the primary")
    api_key_sid: str | None
    default_from: str | None
    messaging_service_sid: str | None
    created_at: datetime
    updated_at: datetime


class NewAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sid: str = Field(pattern=ACCOUNT_SID_PATTERN)
    auth_token: str = Field(min_length=1, max_length=256, description="Primary auth token")
    auth_token_secondary: str | None = Field(default=None, min_length=1, max_length=256)
    friendly_name: str | None = Field(default=None, max_length=200)
    api_key_sid: str | None = Field(default=None, pattern=r"^SK[0-9a-f]{32}$")
    api_key_secret: str | None = Field(default=None, min_length=1, max_length=256)
    default_from: str | None = Field(default=None, pattern=SENDER_PATTERN)
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-f]{32}$")


class AccountChange(BaseModel):
    """Fields to change; a field set to null is cleared (the primary token cannot be)."""

    model_config = ConfigDict(extra="forbid")

    auth_token: str | None = Field(default=None, min_length=1, max_length=256)
    auth_token_secondary: str | None = Field(default=None, min_length=1, max_length=256)
    friendly_name: str | None = Field(default=None, max_length=200)
    api_key_sid: str | None = Field(default=None, pattern=r"^SK[0-9a-f]{32}$")
    api_key_secret: str | None = Field(default=None, min_length=1, max_length=256)
    default_from: str | None = Field(default=None, pattern=SENDER_PATTERN)
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-f]{32}$")


@router.get("", response_model=list[AccountView], summary="Every stored account",
            responses=PROBLEMS)  # fmt: skip
async def list_accounts(connection: ConnectionDep) -> list[AccountView]:
    return [AccountView(**dict(row)) for row in await accounts.list_accounts(connection)]


@router.post(
    "",
    status_code=201,
    response_model=AccountView,
    summary="Add an account: its callbacks are checked with its own tokens",
    responses={**PROBLEMS, 409: {"description": "The account is already stored"}},
)
async def add_account(
    new: NewAccount, connection: ConnectionDep, box: SecretBoxDep, directory: AccountsDep
) -> AccountView:
    """Secrets are stored encrypted and never shown again."""
    row = await accounts.add(connection, Account(**new.model_dump()), box)
    if row is None:
        raise Conflict(f"Account {new.sid} is already stored; PATCH it instead.")
    await directory.refresh(connection)
    return AccountView(**dict(row))


@router.get("/{sid}", response_model=AccountView, summary="One account",
            responses={**PROBLEMS, 404: {"description": "No such account"}})  # fmt: skip
async def get_account(sid: SidPath, connection: ConnectionDep) -> AccountView:
    row = await accounts.get(connection, sid)
    if row is None:
        raise NotFound(f"No account {sid}.")
    return AccountView(**dict(row))


@router.patch(
    "/{sid}",
    response_model=AccountView,
    summary="Change an account: rotate a token, set its sender or API key",
    responses={**PROBLEMS, 404: {"description": "No such account"}},
)
async def change_account(
    sid: SidPath,
    change: AccountChange,
    connection: ConnectionDep,
    box: SecretBoxDep,
    directory: AccountsDep,
) -> AccountView:
    """To rotate the auth token as Twilio does: set `auth_token_secondary` to the new token
    (both are accepted), promote it in Twilio's console, then set `auth_token` to it and
    `auth_token_secondary` to null."""
    changes = change.model_dump(exclude_unset=True)
    if "auth_token" in changes and changes["auth_token"] is None:
        del changes["auth_token"]
    row = await accounts.update(connection, sid, changes, box)
    if row is None:
        raise NotFound(f"No account {sid}.")
    await directory.refresh(connection)
    return AccountView(**dict(row))


@router.delete("/{sid}", status_code=204, response_class=Response, summary="Remove an account",
               responses={**PROBLEMS, 404: {"description": "No such account"}})  # fmt: skip
async def remove_account(
    sid: SidPath, connection: ConnectionDep, directory: AccountsDep
) -> Response:
    """Its callbacks are refused from then on; its messages stay."""
    if not await accounts.remove(connection, sid):
        raise NotFound(f"No account {sid}.")
    await directory.refresh(connection)
    return Response(status_code=204)
