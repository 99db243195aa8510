"""`/v1/keys`: API keys, stored hashed, with scopes and optionally bound to accounts (admin)."""

import re
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from status_tracker import api_keys
from status_tracker.accounts import ACCOUNT_SID_PATTERN
from status_tracker.deps import ConnectionDep, require_admin
from status_tracker.errors import NotFound

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require_admin)])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong API key (problem+json)"},
    403: {"description": "Not an admin key bound to no account (problem+json)"},
}
Scope = Literal["read", "send", "admin"]


class KeyView(BaseModel):
    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    scopes: list[Scope]
    account_sids: list[str] | None = Field(description="Bound to these accounts; null: all")
    created_at: datetime
    revoked_at: datetime | None


class CreatedKey(KeyView):
    key: str = Field(description="The key itself: shown this once, stored only as a hash")


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(default=["read"], min_length=1)
    account_sids: list[str] | None = Field(
        default=None,
        description="Messages of these accounts only; null: every account",
    )

    @model_validator(mode="after")
    def _bound_keys_are_not_admin(self) -> "NewKey":
        for sid in self.account_sids or ():
            if not re.fullmatch(ACCOUNT_SID_PATTERN, sid):
                raise ValueError(f"not an account SID: {sid!r}")
        if self.account_sids is not None and "admin" in self.scopes:
            # An admin key could make itself an unbound one: admin keys see every account.
            raise ValueError("a key bound to accounts cannot have the admin scope")
        return self


@router.get("", response_model=list[KeyView], summary="Every stored key (never the keys)",
            responses=PROBLEMS)  # fmt: skip
async def list_keys(connection: ConnectionDep) -> list[KeyView]:
    return [KeyView(**dict(row)) for row in await api_keys.list_keys(connection)]


@router.post("", status_code=201, response_model=CreatedKey,
             summary="Create a key; it is shown once", responses=PROBLEMS)  # fmt: skip
async def create_key(new: NewKey, connection: ConnectionDep) -> CreatedKey:
    row, key = await api_keys.create(connection, new.name, list(new.scopes), new.account_sids)
    return CreatedKey(**dict(row), key=key)


@router.delete("/{key_id}", response_model=KeyView, summary="Revoke a key, at once",
               responses={**PROBLEMS, 404: {"description": "No such key"}})  # fmt: skip
async def revoke_key(key_id: UUID, connection: ConnectionDep) -> KeyView:
    row = await api_keys.revoke(connection, key_id)
    if row is None:
        raise NotFound(f"No key {key_id}.")
    return KeyView(**dict(row))
