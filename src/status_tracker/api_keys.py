"""API keys for the `/v1` API: configured (admin or read-only), made once and kept in the data
directory, or created (`status-tracker keys create`, `POST /v1/keys`) and stored hashed."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from status_tracker.ids import uuid7
from status_tracker.private_files import ensure_dir, read_secret, write_secret

KEY_FILE = "api-key"


def load_or_create(data_dir: Path) -> tuple[str, bool]:
    """The key kept in `data_dir`, made on first use; the flag says whether it was just made.
    A key file (or directory) that someone else could have written is refused, not adopted."""
    ensure_dir(data_dir)
    path = data_dir / KEY_FILE
    kept = read_secret(path)
    if kept is not None:
        return kept.strip(), False
    key = "st_" + secrets.token_urlsafe(32)
    write_secret(path, key + "\n")
    return key, True


def matches(candidate: str, keys: list[str]) -> bool:
    # Every key is compared, in constant time, so timing tells nothing about which one is close.
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


# --- Principals and stored keys ----------------------------------------------------------------

# `read`: GET the API. `send`: also send and cancel messages. `admin`: everything, accounts and
# keys included. A key is checked for the scope the request needs (see deps.required_scope).
SCOPES = ("read", "send", "admin")
IMPLIED = {"read": {"read"}, "send": {"read", "send"}, "admin": {"read", "send", "admin"}}


@dataclass(frozen=True)
class Principal:
    """Who is calling: what they may do, and which accounts' messages they may see (None: every
    account, and the messages of no account)."""

    name: str
    scopes: frozenset[str]
    account_sids: frozenset[str] | None = None

    def allows(self, scope: str) -> bool:
        return any(scope in IMPLIED[granted] for granted in self.scopes)

    def visible_accounts(self, requested: str | None = None) -> list[str] | None:
        """The accounts a query may read: those the caller asked for (one, or all with None)
        that this principal may see. [] reads nothing; None reads everything."""
        if self.account_sids is None:
            return None if requested is None else [requested]
        if requested is None:
            return sorted(self.account_sids)
        return [requested] if requested in self.account_sids else []


ADMIN = frozenset({"admin"})
READ = frozenset({"read"})


def digest(key: str) -> bytes:
    # SHA-256, not bcrypt: the keys are 256 random bits, so there is nothing to guess that a slow
    # hash would protect, and each request pays the hash (bcrypt would cost ~100 ms of it).
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    return "st_" + secrets.token_urlsafe(32)


def configured_principal(candidate: str, admin_keys: list[str], read_keys: list[str]) -> (
    Principal | None
):  # fmt: skip
    """The principal of a key from the environment: STATUS_TRACKER_API_KEYS are admin keys,
    STATUS_TRACKER_READ_KEYS read-only ones."""
    if matches(candidate, admin_keys):
        return Principal("STATUS_TRACKER_API_KEYS", ADMIN)
    if matches(candidate, read_keys):
        return Principal("STATUS_TRACKER_READ_KEYS", READ)
    return None


KEY_COLUMNS = "id, name, prefix, scopes, account_sids, created_at, revoked_at"


async def create(
    db: Any, name: str, scopes: list[str], account_sids: list[str] | None
) -> tuple[asyncpg.Record, str]:
    """A new key, stored as its SHA-256: (its row, the key itself, to show once)."""
    key = new_key()
    record = await db.fetchrow(
        f"INSERT INTO api_keys (id, name, key_sha256, prefix, scopes, account_sids) "
        f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}",
        uuid7(datetime.now(UTC)),
        name,
        digest(key),
        key[:7],
        sorted(set(scopes)),
        sorted(set(account_sids)) if account_sids is not None else None,
    )
    return record, key


async def list_keys(db: Any) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await db.fetch(
        f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at"
    )
    return records


async def revoke(db: Any, key_id: UUID) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await db.fetchrow(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 "
        f"RETURNING {KEY_COLUMNS}",
        key_id,
    )
    return record


async def stored_principal(db: Any, candidate: str) -> Principal | None:
    """The principal of a stored key that is not revoked. Found by its hash through the unique
    index: the lookup compares digests, never the key, so its time says nothing of the key."""
    record = await db.fetchrow(
        "SELECT name, scopes, account_sids FROM api_keys "
        "WHERE key_sha256 = $1 AND revoked_at IS NULL",
        digest(candidate),
    )
    if record is None:
        return None
    accounts = record["account_sids"]
    return Principal(
        record["name"],
        frozenset(record["scopes"]),
        frozenset(accounts) if accounts is not None else None,
    )
