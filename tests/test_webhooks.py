"""Status callbacks: who may post them, what is refused, and what is kept."""

import base64
import hashlib
import hmac
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from status_tracker.app import create_app
from status_tracker.settings import Settings
from tests.conftest import Server
from tests.support import (
    API_KEY,
    AUTH_TOKEN,
    PUBLIC_URL,
    SECONDARY_TOKEN,
    STATUS_PATH,
    callback_fields,
    new_sid,
    signed,
)


async def post(client: httpx.AsyncClient, fields, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    target, body, headers = signed(fields, **kwargs)
    return await client.post(target, content=body, headers=headers)


async def count(db: asyncpg.Connection) -> tuple[int, int]:
    messages = await db.fetchval("SELECT count(*) FROM messages")
    events = await db.fetchval("SELECT count(*) FROM message_events")
    return messages, events


async def test_signed_callback_is_stored_and_answered_204(client, db):
    sid = new_sid()
    response = await post(client, callback_fields(sid, "sent"))
    assert response.status_code == 204
    assert response.content == b""
    row = await db.fetchrow("SELECT status, to_number, channel FROM messages WHERE sid = $1", sid)
    assert (row["status"], row["to_number"], row["channel"]) == ("sent", "+14155550100", "sms")


async def test_wrong_token_is_refused_and_nothing_stored(client, db):
    response = await post(client, callback_fields(new_sid(), "sent"), token="not-the-token")
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 403
    assert await count(db) == (0, 0)


async def test_tampered_field_is_refused(client, db):
    sid = new_sid()
    target, body, headers = signed(callback_fields(sid, "undelivered", ErrorCode="30003"))
    tampered = body.replace(b"undelivered", b"delivered").replace(b"ErrorCode=30003", b"ErrorCode=")
    response = await client.post(target, content=tampered, headers=headers)
    assert response.status_code == 403
    assert await count(db) == (0, 0)


async def test_missing_signature_is_refused(client, db):
    target, body, headers = signed(callback_fields(new_sid(), "sent"))
    del headers["X-Twilio-Signature"]
    response = await client.post(target, content=body, headers=headers)
    assert response.status_code == 403
    assert "X-Twilio-Signature" in response.json()["detail"]
    assert await count(db) == (0, 0)


async def test_secondary_token_is_accepted_during_rotation(settings, db):
    rotating = settings.model_copy(
        update={"twilio_auth_token_secondary": SecretStr(SECONDARY_TOKEN)}
    )
    async with LifespanManager(create_app(rotating)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://internal") as client:
            old = await post(client, callback_fields(new_sid(), "sent"), token=AUTH_TOKEN)
            new = await post(client, callback_fields(new_sid(), "sent"), token=SECONDARY_TOKEN)
            wrong = await post(client, callback_fields(new_sid(), "sent"), token="other")
    assert (old.status_code, new.status_code, wrong.status_code) == (204, 204, 403)
    assert await count(db) == (2, 2)


async def test_secondary_token_is_refused_when_not_configured(client, db):
    response = await post(client, callback_fields(new_sid(), "sent"), token=SECONDARY_TOKEN)
    assert response.status_code == 403


async def test_https_public_url_behind_http_proxy(client, db):
    """The app is reached as http://internal:8000 but Twilio signed the public https URL."""
    fields = callback_fields(new_sid(), "sent")
    as_twilio_sees_it = await post(client, fields, public_url=PUBLIC_URL)
    assert as_twilio_sees_it.status_code == 204
    as_the_app_sees_it = await post(client, fields, public_url="http://internal:8000")
    assert as_the_app_sees_it.status_code == 403


async def test_public_url_with_explicit_default_port_is_accepted(client):
    response = await post(
        client, callback_fields(new_sid(), "sent"), public_url=PUBLIC_URL + ":443"
    )
    assert response.status_code == 204


async def test_query_string_is_signed_and_kept(client, db):
    sid = new_sid()
    ok = await post(client, callback_fields(sid, "sent"), query="ref=order-17&tenant=a")
    assert ok.status_code == 204
    query = await db.fetchval("SELECT query FROM message_events")
    assert query == {"ref": "order-17", "tenant": "a"}
    target, body, headers = signed(callback_fields(sid, "delivered"), query="ref=order-17")
    reordered = await client.post(target + "&tenant=b", content=body, headers=headers)
    assert reordered.status_code == 403


async def test_shared_key_hmac_sha256_signature(settings, db):
    key = "shared-key-secret"
    with_key = settings.model_copy(update={"twilio_webhook_shared_key": SecretStr(key)})
    fields = callback_fields(new_sid(), "delivered")
    target, body, headers = signed(fields)
    payload = PUBLIC_URL + target + "".join(k + v for k, v in sorted(fields.items()))
    digest = hmac.new(key.encode(), payload.encode(), hashlib.sha256).digest()
    headers["X-Twilio-Signature"] = base64.b64encode(digest).decode()
    headers["X-Twilio-Webhooks-Signature-Settings"] = (
        "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    )
    async with LifespanManager(create_app(with_key)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://internal") as client:
            accepted = await client.post(target, content=body, headers=headers)
            # The same SHA-256 signature made with the auth token instead of the key: refused.
            forged = hmac.new(AUTH_TOKEN.encode(), payload.encode(), hashlib.sha256).digest()
            headers["X-Twilio-Signature"] = base64.b64encode(forged).decode()
            refused = await client.post(target, content=body, headers=headers)
    assert (accepted.status_code, refused.status_code) == (204, 403)
    assert await count(db) == (1, 1)


async def test_unknown_fields_are_kept(client, db):
    sid = new_sid()
    fields = callback_fields(sid, "delivered", BrandNewTwilioField="42", ChannelPrefix="sms")
    assert (await post(client, fields)).status_code == 204
    stored = await db.fetchval("SELECT fields FROM message_events")
    assert stored == fields


async def test_repeated_unknown_field_keeps_every_value(client, db):
    sid = new_sid()
    pairs = [*callback_fields(sid, "sent").items(), ("Tag", "a"), ("Tag", "b")]
    assert (await post(client, pairs)).status_code == 204
    assert (await db.fetchval("SELECT fields FROM message_events"))["Tag"] == ["a", "b"]


async def test_missing_message_sid_is_a_400_and_not_stored(client, db):
    fields = callback_fields(new_sid(), "sent")
    del fields["MessageSid"]
    response = await post(client, fields)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "MessageSid" in response.json()["detail"]
    assert await count(db) == (0, 0)


async def test_missing_status_is_a_400(client, db):
    fields = callback_fields(new_sid(), "sent")
    del fields["MessageStatus"]
    response = await post(client, fields)
    assert response.status_code == 400
    assert "MessageStatus" in response.json()["detail"]
    assert await count(db) == (0, 0)


async def test_malformed_sid_is_a_400(client, db):
    for bad in ("SM123", "XX" + "a" * 32, "SM" + "G" * 32, "SM" + "a" * 33):
        response = await post(client, callback_fields(bad, "sent"))
        assert response.status_code == 400, bad
    assert await count(db) == (0, 0)


async def test_oversized_body_is_a_413(client, db):
    fields = callback_fields(new_sid(), "sent", Padding="x" * 70_000)
    response = await post(client, fields)
    assert response.status_code == 413
    assert await count(db) == (0, 0)


async def test_non_utf8_body_is_a_400(client, db):
    target, _, headers = signed(callback_fields(new_sid(), "sent"))
    response = await client.post(
        target, content=b"MessageSid=%FF%FE&MessageStatus=sent", headers=headers
    )
    assert response.status_code == 400
    assert await count(db) == (0, 0)


async def test_raw_dlr_done_date_is_parsed(client, db):
    sid = new_sid()
    await post(client, callback_fields(sid, "delivered", RawDlrDoneDate="2611241130"))
    done = await db.fetchval("SELECT carrier_done_at FROM message_events")
    assert done == datetime(2026, 11, 24, 11, 30, tzinfo=UTC)


async def test_read_event_type_counts_as_read(client, db):
    sid = new_sid()
    fields = callback_fields(sid, "delivered", EventType="READ", To="whatsapp:+14155550100")
    await post(client, fields)
    row = await db.fetchrow("SELECT status, channel FROM messages WHERE sid = $1", sid)
    assert (row["status"], row["channel"]) == ("read", "whatsapp")


async def test_unknown_status_is_logged_but_never_overrides(client, db):
    sid = new_sid()
    await post(client, callback_fields(sid, "sent"))
    await post(client, callback_fields(sid, "teleported"))
    assert await db.fetchval("SELECT status FROM messages WHERE sid = $1", sid) == "sent"
    assert await db.fetchval("SELECT count(*) FROM message_events WHERE status = 'teleported'") == 1


async def test_callback_for_unknown_sid_creates_the_message(client, db):
    sid = new_sid("MM")
    await post(client, callback_fields(sid, "delivered"))
    row = await db.fetchrow(
        "SELECT status, channel, delivered_at FROM messages WHERE sid = $1", sid
    )
    assert row["status"] == "delivered"
    assert row["channel"] == "mms"
    assert row["delivered_at"] is not None


async def test_event_log_is_append_only(client, db):
    await post(client, callback_fields(new_sid(), "sent"))
    for statement in (
        "UPDATE message_events SET status = 'delivered'",
        "DELETE FROM message_events",
    ):
        try:
            await db.execute(statement)
        except asyncpg.RaiseError as error:
            assert "append-only" in str(error)
        else:
            raise AssertionError(f"{statement} was allowed")
    assert await db.fetchval("SELECT status FROM message_events") == "sent"


async def test_a_message_keeps_its_events(client, db):
    """No foreign key checks each appended event (it costs the ingest path); triggers keep what
    it guarded: a message with events stays, and events only move to a message that exists."""
    sid = new_sid()
    await post(client, callback_fields(sid, "sent"))
    for statement, args in (
        ("DELETE FROM messages WHERE sid = $1", (sid,)),
        ("TRUNCATE messages CASCADE", ()),
        ("UPDATE message_events SET message_id = gen_random_uuid()", ()),
    ):
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await db.execute(statement, *args)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM message_events e JOIN messages m ON m.id = e.message_id "
            "WHERE m.sid = $1",
            sid,
        )
        == 1
    )


async def test_database_down_answers_503_then_recovers(client, db, postgres, database_url):
    """A callback that cannot be committed is never acknowledged; service resumes by itself."""
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(postgres.dsn)
    try:
        await admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        lost = new_sid()
        response = await post(client, callback_fields(lost, "sent"))
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        await admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
    finally:
        await admin.close()
    kept = new_sid()
    assert (await post(client, callback_fields(kept, "sent"))).status_code == 204
    check = await asyncpg.connect(database_url)
    try:
        stored = await check.fetch("SELECT sid FROM messages")
    finally:
        await check.close()
    assert [row["sid"] for row in stored] == [kept]


async def test_nul_character_is_a_400(client, db):
    response = await post(client, callback_fields(new_sid(), "sent", Note="a\x00b"))
    assert response.status_code == 400
    assert await count(db) == (0, 0)


async def test_absurd_error_code_is_kept_raw_not_refused(client, db):
    sid = new_sid()
    fields = callback_fields(sid, "failed", ErrorCode="99999999999999")
    assert (await post(client, fields)).status_code == 204
    row = await db.fetchrow("SELECT status, error_code FROM messages WHERE sid = $1", sid)
    assert (row["status"], row["error_code"]) == ("failed", None)
    assert (await db.fetchval("SELECT fields FROM message_events"))["ErrorCode"] == "99999999999999"


@pytest.mark.parametrize(
    "raw",
    ["³", "①", "٣٠٠٠٣", "30003" + "0" * 5000, "0" * 20 + "30003"],
    ids=["superscript", "circled", "arabic-indic", "5005-digits", "25-digits"],
)
async def test_error_code_of_anything_but_a_few_ascii_digits_is_kept_raw(client, db, raw):
    sid = new_sid()
    assert (await post(client, callback_fields(sid, "failed", ErrorCode=raw))).status_code == 204
    row = await db.fetchrow("SELECT status, error_code FROM messages WHERE sid = $1", sid)
    assert (row["status"], row["error_code"]) == ("failed", None)
    assert (await db.fetchval("SELECT fields FROM message_events"))["ErrorCode"] == raw


async def test_an_unexpected_failure_is_a_logged_500_problem_and_nothing_stored(
    client, db, monkeypatch, caplog
):
    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr("status_tracker.routes.webhooks.report_from_callback", fail)
    response = await post(client, callback_fields(new_sid(), "sent"))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
    }
    assert any(
        record.exc_info and record.exc_info[1].args == ("a bug",) for record in caplog.records
    )
    assert await count(db) == (0, 0)


def unfinished_request(port: int, path: str, signature: str | None) -> tuple[bytes, float]:
    """A POST whose body never arrives whole; (all the server answered, seconds until it closed)."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.settimeout(30)
        signed_by = f"X-Twilio-Signature: {signature}\r\n" if signature else ""
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n{signed_by}"
            "Content-Type: application/x-www-form-urlencoded\r\n\r\nMessageSid=SM".encode()
        )
        started, answer = time.monotonic(), b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer, time.monotonic() - started


@pytest.mark.parametrize("path", [STATUS_PATH, "/webhooks/twilio/inbound"])
def test_unsigned_and_slow_bodies_do_not_hold_a_connection(database_url: str, tmp_path: Path, path):
    environment = {
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
        "STATUS_TRACKER_BODY_TIMEOUT": "1",
    }
    with Server(environment, tmp_path) as server:
        unsigned, seconds = unfinished_request(server.port, path, signature=None)
        assert unsigned.startswith(b"HTTP/1.1 403"), unsigned
        assert seconds < 0.9  # refused before waiting for the body
        slow, seconds = unfinished_request(server.port, path, signature="c2lnbmVk")
        assert slow.startswith(b"HTTP/1.1 408"), slow
        assert b"application/problem+json" in slow
        assert 0.9 < seconds < 5


def shared_key_signed(fields: dict[str, str], key: str, key_id: str) -> tuple[str, bytes, dict]:
    target, body, headers = signed(fields)
    payload = PUBLIC_URL + target + "".join(k + v for k, v in sorted(fields.items()))
    digest = hmac.new(key.encode(), payload.encode(), hashlib.sha256).digest()
    headers["X-Twilio-Signature"] = base64.b64encode(digest).decode()
    headers["X-Twilio-Webhooks-Signature-Settings"] = f"key={key_id},algorithm=HMAC_SHA256"
    return target, body, headers


async def test_several_shared_keys_are_accepted_each_by_its_key_id(settings, db):
    keys = {"webhooks_sharedkey_old": "old-secret", "webhooks_sharedkey_new": "new-secret"}
    with_keys = settings.model_copy(
        update={"twilio_webhook_shared_keys": {k: SecretStr(v) for k, v in keys.items()}}
    )
    sid = new_sid()
    async with LifespanManager(create_app(with_keys)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://internal") as client:

            async def answer(status: str, key: str, key_id: str) -> int:
                target, body, headers = shared_key_signed(callback_fields(sid, status), key, key_id)
                return (await client.post(target, content=body, headers=headers)).status_code

            # Mid-rotation, Twilio signs some callbacks with the old key and some with the new.
            assert await answer("sent", "old-secret", "webhooks_sharedkey_old") == 204
            assert await answer("delivered", "new-secret", "webhooks_sharedkey_new") == 204
            # A key checks only the signatures that name it; an id not configured is refused.
            assert await answer("read", "old-secret", "webhooks_sharedkey_new") == 403
            assert await answer("read", "new-secret", "webhooks_sharedkey_gone") == 403
    assert await count(db) == (1, 2)


def test_shared_keys_are_read_as_id_secret_pairs() -> None:
    read = Settings(_env_file=None, TWILIO_WEBHOOK_SHARED_KEYS="k1=s1, k2=s2=with-equals")
    assert read.webhook_shared_keys == {"k1": "s1", "k2": "s2=with-equals"}
    with pytest.raises(ValueError):
        Settings(_env_file=None, TWILIO_WEBHOOK_SHARED_KEYS="k1")
