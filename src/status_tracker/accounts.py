"""Twilio accounts (and subaccounts) beside the default one of the environment.

Each account has its own auth tokens (primary, and a secondary during a rotation), optionally an
API key for REST calls (Twilio's recommended credentials) and a default sender. Secrets are
stored encrypted (`encryption.py`). Every worker keeps the accounts in memory, by SID, so that a
callback's `AccountSid` picks the tokens that check its signature in one dictionary lookup,
however many accounts there are; `refresh` reloads only the rows that changed, and the app runs
it every `REFRESH_SECONDS` (a worker also runs it at once after a change it made itself).
"""

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from status_tracker.callbacks import Form
from status_tracker.encryption import SecretBox, UndecryptableSecret
from status_tracker.settings import Settings
from status_tracker.signatures import SignatureVerifier
from status_tracker.twilio_api import TwilioApi

log = logging.getLogger(__name__)

ACCOUNT_SID_PATTERN = r"^AC[0-9a-f]{32}$"
# How stale another worker's change may be in this worker's memory.
REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Account:
    sid: str
    auth_token: str
    auth_token_secondary: str | None = None
    friendly_name: str | None = None
    api_key_sid: str | None = None
    api_key_secret: str | None = None
    default_from: str | None = None
    messaging_service_sid: str | None = None

    @property
    def signing_tokens(self) -> list[str]:
        return [t for t in (self.auth_token, self.auth_token_secondary) if t]


# --- SQL ---------------------------------------------------------------------------------------

PUBLIC_COLUMNS = """
    sid, friendly_name, auth_token_secondary IS NOT NULL AS rotating, api_key_sid, default_from,
    messaging_service_sid, created_at, updated_at
"""
SECRET_COLUMNS = "auth_token, auth_token_secondary, api_key_secret"


async def add(db: Any, account: Account, box: SecretBox) -> asyncpg.Record | None:
    """Store a new account; None if its SID is already stored."""
    record: asyncpg.Record | None = await db.fetchrow(
        f"""
        INSERT INTO accounts (sid, friendly_name, auth_token, auth_token_secondary, api_key_sid,
                              api_key_secret, default_from, messaging_service_sid)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (sid) DO NOTHING
        RETURNING {PUBLIC_COLUMNS}
        """,
        account.sid,
        account.friendly_name,
        box.encrypt(account.auth_token),
        _encrypted(box, account.auth_token_secondary),
        account.api_key_sid,
        _encrypted(box, account.api_key_secret),
        account.default_from,
        account.messaging_service_sid,
    )
    return record


async def update(
    db: Any, sid: str, changes: dict[str, str | None], box: SecretBox
) -> asyncpg.Record | None:
    """Change some columns of an account (secrets given in clear, stored encrypted); None if
    there is no such account."""
    secret = {"auth_token", "auth_token_secondary", "api_key_secret"}
    names = list(changes)
    values = [_encrypted(box, changes[n]) if n in secret else changes[n] for n in names]
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    record: asyncpg.Record | None = await db.fetchrow(
        f"UPDATE accounts SET {assignments}{', ' if names else ''}updated_at = clock_timestamp() "
        f"WHERE sid = $1 RETURNING {PUBLIC_COLUMNS}",
        sid,
        *values,
    )
    return record


async def rotate_token(db: Any, sid: str, box: SecretBox, new_token: str | None) -> Any:
    """A rotation in two steps, as at Twilio: with `new_token`, it is accepted beside the primary
    (Twilio's secondary token); without, the secondary becomes the primary (Twilio promoted it).
    None if there is no such account; False if there is no secondary to promote."""
    if new_token is not None:
        return await update(db, sid, {"auth_token_secondary": new_token}, box)
    record: asyncpg.Record | None = await db.fetchrow(
        f"""
        UPDATE accounts SET auth_token = auth_token_secondary, auth_token_secondary = NULL,
                            updated_at = clock_timestamp()
        WHERE sid = $1 AND auth_token_secondary IS NOT NULL
        RETURNING {PUBLIC_COLUMNS}
        """,
        sid,
    )
    if record is None and await get(db, sid) is not None:
        return False
    return record


async def remove(db: Any, sid: str) -> bool:
    removed: str | None = await db.fetchval(
        "DELETE FROM accounts WHERE sid = $1 RETURNING sid", sid
    )
    return removed is not None


async def get(db: Any, sid: str) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {PUBLIC_COLUMNS} FROM accounts WHERE sid = $1", sid
    )
    return record


async def list_accounts(db: Any) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await db.fetch(
        f"SELECT {PUBLIC_COLUMNS} FROM accounts ORDER BY sid"
    )
    return records


async def reencrypt(connection: asyncpg.Connection, box: SecretBox) -> int:
    """Encrypt every stored secret again with the first key; how many accounts were."""
    async with connection.transaction():
        rows = await connection.fetch(f"SELECT sid, {SECRET_COLUMNS} FROM accounts FOR UPDATE")
        for row in rows:
            await connection.execute(
                "UPDATE accounts SET auth_token = $2, auth_token_secondary = $3, "
                "api_key_secret = $4 WHERE sid = $1",
                row["sid"],
                box.reencrypt(row["auth_token"]),
                row["auth_token_secondary"] and box.reencrypt(row["auth_token_secondary"]),
                row["api_key_secret"] and box.reencrypt(row["api_key_secret"]),
            )
    return len(rows)


def _encrypted(box: SecretBox, secret: str | None) -> str | None:
    return None if secret is None else box.encrypt(secret)


def _decrypted(row: asyncpg.Record, box: SecretBox) -> Account:
    secondary, api_key_secret = row["auth_token_secondary"], row["api_key_secret"]
    return Account(
        sid=row["sid"],
        friendly_name=row["friendly_name"],
        auth_token=box.decrypt(row["auth_token"]),
        auth_token_secondary=secondary and box.decrypt(secondary),
        api_key_sid=row["api_key_sid"],
        api_key_secret=api_key_secret and box.decrypt(api_key_secret),
        default_from=row["default_from"],
        messaging_service_sid=row["messaging_service_sid"],
    )


def twilio_api(account: Account, settings: Settings) -> TwilioApi:
    """A client of Twilio's API with the account's credentials: its API key if it has one (as
    Twilio recommends), else its auth token."""
    api_key = None
    if account.api_key_sid and account.api_key_secret:
        api_key = (account.api_key_sid, account.api_key_secret)
    return TwilioApi(
        account.sid,
        account.auth_token,
        api_key=api_key,
        base_url=settings.twilio_api_base_url,
        timeout=settings.twilio_timeout_seconds,
    )


async def load(db: Any, sid: str, box: SecretBox) -> Account | None:
    """A stored account with its secrets decrypted."""
    row = await db.fetchrow(
        f"SELECT sid, friendly_name, {SECRET_COLUMNS}, api_key_sid, default_from, "
        "messaging_service_sid FROM accounts WHERE sid = $1",
        sid,
    )
    return None if row is None else _decrypted(row, box)


# --- The in-memory directory -------------------------------------------------------------------


def _accounts_of(batch: str) -> list[str]:
    """The distinct `data.accountSid` of an Event Streams batch's events (not yet verified)."""
    try:
        document = json.loads(batch)
    except ValueError:
        return []
    events = document if isinstance(document, list) else [document]
    sids = {
        event["data"].get("accountSid")
        for event in events
        if isinstance(event, dict) and isinstance(event.get("data"), dict)
    }
    return sorted(sid for sid in sids if isinstance(sid, str))


class AccountDirectory:
    """The accounts by SID, with their signature verifiers and Twilio clients, in memory.

    A callback's `AccountSid` picks its verifier: a stored account's own tokens; else the
    default account of the environment (TWILIO_AUTH_TOKEN…) when the SID is that account's
    (TWILIO_ACCOUNT_SID), or when TWILIO_ACCOUNT_SID is unset, or when the callback names none;
    else nothing, and the callback is refused as a bad signature is."""

    def __init__(self, box: SecretBox, default: SignatureVerifier, settings: Settings) -> None:
        self._box = box
        self._default = default
        self._settings = settings
        self._accounts: dict[str, Account] = {}
        self._verifiers: dict[str, SignatureVerifier] = {}
        self._versions: dict[str, datetime] = {}
        self._twilio: dict[str, TwilioApi] = {}
        self._fingerprint: Any = None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return self._default.configured or bool(self._verifiers)

    def __len__(self) -> int:
        return len(self._accounts)

    def verifier_for(self, account_sid: str | None) -> SignatureVerifier | None:
        stored = self._verifiers.get(account_sid) if account_sid else None
        if stored is not None:
            return stored
        default_sid = self._settings.twilio_account_sid
        if account_sid is None or default_sid is None or account_sid == default_sid:
            return self._default
        return None

    def verify(
        self, url: str, body: Form | str, signature: str, signature_settings: str | None
    ) -> bool:
        """`body` is a form, or the text of an Event Streams batch (whose events name their
        account in `data.accountSid`); one account named picks its tokens, as above."""
        account_sids = body.getall("AccountSid") if isinstance(body, Form) else _accounts_of(body)
        verifier = self.verifier_for(account_sids[0] if len(account_sids) == 1 else None)
        return verifier is not None and verifier.verify(url, body, signature, signature_settings)

    def sids(self) -> list[str]:
        return list(self._accounts)

    def account(self, sid: str) -> Account | None:
        return self._accounts.get(sid)

    def twilio_for(self, sid: str) -> TwilioApi | None:
        """A client of the stored account `sid` (kept until its credentials change)."""
        account = self._accounts.get(sid)
        if account is None:
            return None
        client = self._twilio.get(sid)
        if client is None:
            client = self._twilio[sid] = twilio_api(account, self._settings)
        return client

    async def refresh(self, db: Any) -> None:
        """Bring the directory up to date with the table, decrypting only what changed."""
        async with self._lock:
            # Which SIDs there are, and the latest change: a few milliseconds for 25,000 rows.
            fingerprint = tuple(await db.fetchrow(
                "SELECT count(*), max(updated_at), sum(hashtext(sid)) FROM accounts"
            ))  # fmt: skip
            if fingerprint == self._fingerprint:
                return
            versions = {r["sid"]: r["updated_at"] for r in await db.fetch(
                "SELECT sid, updated_at FROM accounts"
            )}  # fmt: skip
            changed = [sid for sid, at in versions.items() if self._versions.get(sid) != at]
            rows = await db.fetch(
                f"SELECT sid, friendly_name, {SECRET_COLUMNS}, api_key_sid, default_from, "
                "messaging_service_sid, updated_at FROM accounts WHERE sid = ANY($1::text[])",
                changed,
            )
            for sid in [s for s in self._accounts if s not in versions] + changed:
                self._forget(sid)
            for row in rows:
                try:
                    self._remember(row)
                except UndecryptableSecret:
                    # Its callbacks are refused until the right key is configured; the others
                    # keep working.
                    log.error("account secrets not decryptable", extra={"account": row["sid"]})
            self._fingerprint = fingerprint

    def _forget(self, sid: str) -> None:
        self._accounts.pop(sid, None)
        self._verifiers.pop(sid, None)
        self._versions.pop(sid, None)
        client = self._twilio.pop(sid, None)
        if client is not None:
            asyncio.get_running_loop().create_task(client.close())

    def _remember(self, row: asyncpg.Record) -> None:
        account = _decrypted(row, self._box)
        self._accounts[account.sid] = account
        self._verifiers[account.sid] = SignatureVerifier(account.signing_tokens)
        self._versions[account.sid] = row["updated_at"]

    async def refresh_periodically(self, pool: asyncpg.Pool) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                async with pool.acquire() as connection:
                    await self.refresh(connection)
            except Exception as error:  # the database may be away; the next round retries
                log.warning("accounts not refreshed", extra={"error": type(error).__name__})

    async def close(self) -> None:
        for client in self._twilio.values():
            await client.close()
        self._twilio.clear()
