"""Many Twilio accounts in one deployment: each account's callbacks are checked with its own
tokens, its secrets are encrypted at rest, and it sends through its own credentials."""

import asyncio
import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet

from status_tracker import accounts
from status_tracker.accounts import REFRESH_SECONDS, Account
from status_tracker.database import create_pool, downgrade, migrate
from status_tracker.encryption import KEY_FILE, SecretBox, UndecryptableSecret, load_or_create_key
from status_tracker.reconcile import run_pass
from tests.conftest import ENV_PREFIXES, Simulator, app_client
from tests.support import ACCOUNT_SID, AUTH_TOKEN, callback_fields, new_sid, signed

ACCOUNT_A = "AC" + "a" * 32
ACCOUNT_B = "AC" + "b" * 32
TOKEN_A = "token-of-account-a-0123456789"
TOKEN_B = "token-of-account-b-0123456789"
NEW_TOKEN_A = "new-token-of-account-a-98765"


async def add_account(client, sid: str, token: str, **extra: str) -> None:  # type: ignore[no-untyped-def]
    answer = await client.post("/v1/accounts", json={"sid": sid, "auth_token": token, **extra})
    assert answer.status_code == 201, answer.text


async def callback(client, account_sid: str, token: str, sid: str | None = None) -> int:  # type: ignore[no-untyped-def]
    fields = callback_fields(sid or new_sid(), "sent", AccountSid=account_sid)
    target, body, headers = signed(fields, token=token)
    answer = await client.post(target, content=body, headers=headers)
    return int(answer.status_code)


async def test_callbacks_signed_by_each_accounts_token_are_accepted_only_for_that_account(
    client, db
):
    await add_account(client, ACCOUNT_A, TOKEN_A)
    await add_account(client, ACCOUNT_B, TOKEN_B)
    assert await callback(client, ACCOUNT_A, TOKEN_A) == 204
    assert await callback(client, ACCOUNT_B, TOKEN_B) == 204
    assert await callback(client, ACCOUNT_A, TOKEN_B) == 403
    assert await callback(client, ACCOUNT_B, TOKEN_A) == 403
    # The environment's token no longer speaks for an account that has its own.
    assert await callback(client, ACCOUNT_A, AUTH_TOKEN) == 403
    stored = await db.fetch("SELECT account_sid, count(*) FROM messages GROUP BY 1 ORDER BY 1")
    assert [tuple(row) for row in stored] == [(ACCOUNT_A, 1), (ACCOUNT_B, 1)]


async def test_an_unknown_account_is_refused_like_a_bad_signature(settings):
    with_default = settings.model_copy(update={"twilio_account_sid": ACCOUNT_SID})
    async with app_client(with_default) as client:
        # The environment's settings keep working as the default account.
        assert await callback(client, ACCOUNT_SID, AUTH_TOKEN) == 204
        unknown = "AC" + "c" * 32
        fields = callback_fields(new_sid(), "sent", AccountSid=unknown)
        target, body, headers = signed(fields, token=AUTH_TOKEN)
        refused = await client.post(target, content=body, headers=headers)
        target, body, headers = signed(callback_fields(new_sid(), "sent"), token="wrong")
        bad_signature = await client.post(target, content=body, headers=headers)
        assert refused.status_code == bad_signature.status_code == 403
        assert refused.json() == bad_signature.json()
        # A removed account's callbacks are refused from then on.
        await add_account(client, ACCOUNT_A, TOKEN_A)
        assert await callback(client, ACCOUNT_A, TOKEN_A) == 204
        assert (await client.delete(f"/v1/accounts/{ACCOUNT_A}")).status_code == 204
        assert await callback(client, ACCOUNT_A, TOKEN_A) == 403


async def test_an_accounts_token_rotates_without_touching_the_others(client):
    await add_account(client, ACCOUNT_A, TOKEN_A)
    await add_account(client, ACCOUNT_B, TOKEN_B)
    step_one = await client.patch(
        f"/v1/accounts/{ACCOUNT_A}", json={"auth_token_secondary": NEW_TOKEN_A}
    )
    assert step_one.json()["rotating"] is True
    assert await callback(client, ACCOUNT_A, TOKEN_A) == 204
    assert await callback(client, ACCOUNT_A, NEW_TOKEN_A) == 204
    assert await callback(client, ACCOUNT_B, NEW_TOKEN_A) == 403
    step_two = await client.patch(
        f"/v1/accounts/{ACCOUNT_A}",
        json={"auth_token": NEW_TOKEN_A, "auth_token_secondary": None},
    )
    assert step_two.json()["rotating"] is False
    assert await callback(client, ACCOUNT_A, TOKEN_A) == 403
    assert await callback(client, ACCOUNT_A, NEW_TOKEN_A) == 204
    assert await callback(client, ACCOUNT_B, TOKEN_B) == 204


async def test_another_worker_learns_of_a_new_account_within_the_refresh_interval(settings):
    async with app_client(settings) as first, app_client(settings) as second:
        await add_account(first, ACCOUNT_A, TOKEN_A)
        assert await callback(first, ACCOUNT_A, TOKEN_A) == 204
        waited = 0.0
        while await callback(second, ACCOUNT_A, TOKEN_A) != 204:
            assert waited < REFRESH_SECONDS + 3, "the second worker never learnt of the account"
            await asyncio.sleep(0.2)
            waited += 0.2


async def test_account_secrets_are_encrypted_at_rest_and_never_shown(client, db, settings):
    secret = "api-key-secret-0123456789abcdef"
    await add_account(
        client, ACCOUNT_A, TOKEN_A, api_key_sid="SK" + "1" * 32, api_key_secret=secret,
        auth_token_secondary=NEW_TOKEN_A,
    )  # fmt: skip
    shown = (await client.get("/v1/accounts")).text + (
        await client.get(f"/v1/accounts/{ACCOUNT_A}")
    ).text
    stored = await db.fetchrow("SELECT * FROM accounts")
    for clear in (TOKEN_A, NEW_TOKEN_A, secret):
        assert clear not in shown
        assert clear not in repr(dict(stored))
    box = SecretBox.from_settings(settings)
    assert box.decrypt(stored["auth_token"]) == TOKEN_A
    assert box.decrypt(stored["api_key_secret"]) == secret


async def test_reencrypt_moves_every_secret_to_the_new_key(db):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    account = Account(ACCOUNT_A, TOKEN_A, NEW_TOKEN_A, api_key_sid="SK" + "1" * 32,
                      api_key_secret="s3cret")  # fmt: skip
    await accounts.add(db, account, SecretBox([old]))
    assert await accounts.reencrypt(db, SecretBox([new, old])) == 1
    stored = await db.fetchrow("SELECT * FROM accounts")
    for column, clear in (("auth_token", TOKEN_A), ("auth_token_secondary", NEW_TOKEN_A),
                          ("api_key_secret", "s3cret")):  # fmt: skip
        assert SecretBox([new]).decrypt(stored[column]) == clear
        with pytest.raises(UndecryptableSecret):
            SecretBox([old]).decrypt(stored[column])


def test_without_a_configured_key_one_is_made_once_and_kept_private(tmp_path: Path):
    key = load_or_create_key(tmp_path / "data")
    assert (tmp_path / "data" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path / "data") == key
    assert SecretBox([key]).decrypt(SecretBox([key]).encrypt("x")) == "x"


async def test_a_message_is_sent_through_the_account_it_names(settings, tmp_path: Path):
    simulator = Simulator(tmp_path, "--seed", "7", "--delay-min", "0.01", "--delay-max", "0.1")
    try:
        # No default account at all: only the stored one can send.
        sending = settings.model_copy(update={"twilio_api_base_url": simulator.url})
        async with app_client(sending) as client:
            request = {"to": "+14155550100", "body": "hello", "account_sid": ACCOUNT_SID}
            assert (await client.post("/v1/messages", json=request)).status_code == 404
            await add_account(client, ACCOUNT_SID, AUTH_TOKEN, default_from="+15005550006")
            sent = await client.post("/v1/messages", json=request)
            assert sent.status_code == 201, sent.text
            assert sent.json()["account_sid"] == ACCOUNT_SID
            assert sent.json()["sid"].startswith("SM")
            unnamed = await client.post("/v1/messages", json={**request, "account_sid": None})
            assert unnamed.status_code == 503  # no default account is configured
            # A key bound to another account cannot send through this one.
            created = await client.post(
                "/v1/keys", json={"name": "b", "scopes": ["send"], "account_sids": [ACCOUNT_B]}
            )
            bound = {"Authorization": f"Bearer {created.json()['key']}"}
            refused = await client.post("/v1/messages", json=request, headers=bound)
            assert refused.status_code == 404
    finally:
        simulator.close()


async def test_a_filled_store_upgrades_to_accounts_without_losing_an_event(database_url):
    await asyncio.to_thread(downgrade, database_url, "2026_12_05_fidelity")
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """
            WITH m AS (
                INSERT INTO messages (sid, account_sid, status, status_rank, created_at)
                SELECT 'SM' || md5(g::text), CASE WHEN g % 2 = 0 THEN $1 END, 'sent', 50,
                       now() - g * interval '1 minute'
                FROM generate_series(1, 200) g RETURNING id, created_at
            )
            INSERT INTO message_events (message_id, status, status_rank, source, received_at)
            SELECT id, 'sent', 50, 'callback', created_at FROM m
            """,
            ACCOUNT_A,
        )
        before = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        await asyncio.to_thread(migrate, database_url)
        after = await connection.fetch("SELECT * FROM message_events ORDER BY id")
        # Every event as it was (later migrations may add columns).
        assert [{k: row[k] for k in before[0].keys()} for row in after] == [
            dict(row) for row in before
        ]
        assert await connection.fetchval(
            "SELECT count(*) FROM messages WHERE account_sid = $1", ACCOUNT_A
        ) == 100  # fmt: skip
        await asyncio.to_thread(downgrade, database_url, "2026_12_05_fidelity")
        assert await connection.fetchval("SELECT count(*) FROM message_events") == 200
    finally:
        await connection.close()


def run_cli(database_url: str, tmp_path: Path, *args: str, stdin: str = "") -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    environment.update({
        "DATABASE_URL": database_url,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
    })  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "status_tracker.cli", *args],
        input=stdin, capture_output=True, text=True, env=environment, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert TOKEN_A not in done.stderr + done.stdout
    return done.stdout


async def test_accounts_and_keys_from_the_command_line(database_url, db, tmp_path: Path):
    cli = lambda *args, stdin="": asyncio.to_thread(  # noqa: E731
        run_cli, database_url, tmp_path, *args, stdin=stdin
    )
    await cli("accounts", "add", ACCOUNT_A, "--auth-token", "-", "--name", "Acme",
              stdin=TOKEN_A + "\n")  # fmt: skip
    assert ACCOUNT_A in await cli("accounts", "list")
    await cli("accounts", "rotate-token", ACCOUNT_A, "--secondary", "-", stdin=NEW_TOKEN_A + "\n")
    assert "rotating" in await cli("accounts", "list")
    await cli("accounts", "rotate-token", ACCOUNT_A, "--promote")
    box = SecretBox([(tmp_path / "data" / KEY_FILE).read_text().strip()])
    stored = await db.fetchrow("SELECT auth_token, auth_token_secondary FROM accounts")
    assert box.decrypt(stored["auth_token"]) == NEW_TOKEN_A
    assert stored["auth_token_secondary"] is None

    created = await cli("keys", "create", "ci", "--scope", "read", "--account", ACCOUNT_A)
    key = created.split("shown once", 1)[1].split()[-1]
    assert key.startswith("st_")
    row = await db.fetchrow("SELECT id, key_sha256, scopes, account_sids FROM api_keys")
    assert bytes(row["key_sha256"]) == hashlib.sha256(key.encode()).digest()
    assert (row["scopes"], row["account_sids"]) == (["read"], [ACCOUNT_A])
    assert key not in await cli("keys", "list")
    await cli("keys", "revoke", str(row["id"]))
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys")
    await cli("accounts", "remove", ACCOUNT_A)
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_a_stored_account_is_reconciled_by_passes_of_its_own(settings, tmp_path: Path, db):
    simulator = Simulator(tmp_path, "--seed", "7", "--delay-min", "0.01", "--delay-max", "0.1",
                          "--loss", "1")  # fmt: skip
    sending = settings.model_copy(update={"twilio_api_base_url": simulator.url})
    try:
        async with app_client(sending) as client:
            await add_account(client, ACCOUNT_SID, AUTH_TOKEN, default_from="+15005550006")
            await add_account(client, ACCOUNT_B, TOKEN_B)
            started = datetime.now(UTC) - timedelta(minutes=1)
            request = {"to": "+14155550100", "body": "hello", "account_sid": ACCOUNT_SID}
            sent = [(await client.post("/v1/messages", json=request)).json() for _ in range(3)]
            # B's message, which the simulator's account does not know.
            sid_b = new_sid()
            assert await callback(client, ACCOUNT_B, TOKEN_B, sid_b) == 204
            await asyncio.sleep(1)  # the simulator delivers them; every callback is lost

            pool = await create_pool(sending, sending.database_url.get_secret_value())
            account = await accounts.load(db, ACCOUNT_SID, SecretBox.from_settings(settings))
            assert account is not None
            api = accounts.twilio_api(account, sending)
            try:
                report = await run_pass(pool, api, sending, since=started,
                                        until=datetime.now(UTC), account_sid=ACCOUNT_SID)  # fmt: skip
            finally:
                await api.close()
                await pool.close()
            assert report.state == "finished", report.errors
            # Its messages were settled; B's, which only B's passes look at, was not reported.
            assert report.counts["status_differs"] == 3
            assert "not_at_twilio" not in report.counts
            statuses = {m["id"]: (await client.get(f"/v1/messages/{m['id']}")).json()["status"]
                        for m in sent}  # fmt: skip
            assert set(statuses.values()) == {"delivered"}

            def bound_to(account_sid: str) -> Any:
                return client.post("/v1/keys", json={"name": "r", "account_sids": [account_sid]})

            key_a = (await bound_to(ACCOUNT_SID)).json()["key"]
            key_b = (await bound_to(ACCOUNT_B)).json()["key"]
            passes_a = await client.get("/v1/reconciliations", headers=bearer(key_a))
            passes_b = await client.get("/v1/reconciliations", headers=bearer(key_b))
            assert [p["account_sid"] for p in passes_a.json()] == [ACCOUNT_SID]
            assert passes_b.json() == []
            shown = f"/v1/reconciliations/{report.reconciliation_id}"
            assert (await client.get(shown, headers=bearer(key_b))).status_code == 404
    finally:
        simulator.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_the_generated_secret_key_is_made_only_once_an_account_needs_it(settings):
    key_file = settings.data_dir / KEY_FILE
    async with app_client(settings) as client:
        assert await callback(client, ACCOUNT_SID, AUTH_TOKEN) == 204
        assert not key_file.exists()
        await add_account(client, ACCOUNT_A, TOKEN_A)
    assert key_file.stat().st_mode & 0o777 == 0o600
    # The next start decrypts with the kept key.
    async with app_client(settings) as client:
        assert await callback(client, ACCOUNT_A, TOKEN_A) == 204
