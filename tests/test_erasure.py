"""Erasure of a phone number: no trace left in any table, nothing else touched, and the event log
append-only for every other change."""

import asyncio
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest

from status_tracker import privacy, repository
from status_tracker.callbacks import StatusReport
from tests.conftest import COMMAND, ENV_PREFIXES, Simulator, app_client
from tests.support import ACCOUNT_SID, callback_fields, new_sid, signed

NUMBER = "+14155550100"
OTHER = "+12125550199"
SENDER = "+15005550006"


@pytest.fixture(params=["none", "last4"])
async def service(request, settings, tmp_path):
    """The app, sending through a simulator, storing numbers as `redact_numbers` says."""
    simulator = Simulator(tmp_path, "--delay-min", "0", "--delay-max", "0.05")
    configured = settings.model_copy(update={
        "redact_numbers": request.param, "auto_reply": "Hi $from, we got: $body",
        "twilio_account_sid": ACCOUNT_SID, "twilio_api_base_url": simulator.url,
        "twilio_from": SENDER,
    })  # fmt: skip
    try:
        async with app_client(configured) as client:
            yield client
    finally:
        simulator.close()


async def post(client, fields, path="/webhooks/twilio/status", query=""):  # type: ignore[no-untyped-def]
    target, body, headers = signed(fields, path=path, query=query)
    response = await client.post(target, content=body, headers=headers)
    assert response.status_code in (200, 204), response.text
    return response


def personal(person: str) -> list[str]:
    return [f"{person} Lovelace", f"{person} Street", f"{person}.jpg", f"{person} hello"]


async def store_traces_of(client, db, number: str, person: str) -> None:  # type: ignore[no-untyped-def]
    """Every path that stores a number: a send with a body, its callbacks, a WhatsApp
    conversation with its names and places, an inbound message and its auto-reply, a
    reconciliation finding and error, a client's reference, metadata and idempotency key."""
    sent = await client.post(
        "/v1/messages",
        json={"to": number, "body": f"Your code for {number} is 1234", "reference": f"r-{number}",
              "metadata": {"customer": number, "phone": int(number[1:])},
              "media_urls": [f"https://example.com/{person}.jpg"]},
        headers={"Idempotency-Key": f"key-{number}"},
    )  # fmt: skip
    assert sent.status_code == 201, sent.text
    sid = new_sid()
    for status in ("sent", "delivered"):
        await post(client, callback_fields(sid, status, To=number), query=f"ref=x{number}")
    wa_sid, whatsapp = new_sid(), f"whatsapp:{number}"
    await post(client, callback_fields(wa_sid, "read", To=whatsapp, From=f"whatsapp:{SENDER}",
                                       ChannelToAddress=number[1:], ProfileName=f"{person} Lovelace",
                                       ChannelMetadata=json.dumps({"WaId": number[1:]})))  # fmt: skip
    inbound = {
        "MessageSid": new_sid("MM"), "AccountSid": ACCOUNT_SID, "From": whatsapp,
        "To": f"whatsapp:{SENDER}", "Body": f"I live on {person} Street", "WaId": number[1:],
        "ProfileName": f"{person} Lovelace", "Latitude": "37.7", "Longitude": "-122.4",
        "NumMedia": "1", "MediaUrl0": f"https://api.twilio.com/{person}.jpg", "FromCity": "SF",
    }  # fmt: skip
    await post(client, inbound, path="/webhooks/twilio/inbound")
    reconciliation = await repository.start_reconciliation(
        db, datetime.now(UTC) - timedelta(days=1), datetime.now(UTC), False
    )
    await repository.finish_reconciliation(
        db, reconciliation, state="finished", counts={}, duration_seconds=1.0,
        errors=[f"Twilio refused {number}: 21211"],
        discrepancies=[("not_sent", False, None, None, {"to": number, "body": f"{person} hello"})],
    )  # fmt: skip


TEXT_TYPES = ("text", "character varying", "jsonb", "json", "character")


async def traces(db, needles: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Rows holding any of `needles`, by table.column, in every text and JSON column of every
    table of the schema (tables added later are searched too)."""
    columns = await db.fetch(
        """
        SELECT c.table_name, c.column_name FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_schema, table_name)
        WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
          AND c.data_type = ANY($1::text[])
        """,
        list(TEXT_TYPES),
    )
    assert len(columns) > 20
    found = {}
    for table, column in columns:
        count = await db.fetchval(
            f'SELECT count(*) FROM "{table}" WHERE EXISTS (SELECT 1 FROM unnest($1::text[]) n '
            f'WHERE strpos("{column}"::text, n) > 0)',
            needles,
        )
        if count:
            found[f"{table}.{column}"] = count
    return found


def needles_of(number: str) -> list[str]:
    digits = number[1:]
    return [digits, digits[:-4] + "****"]


async def test_erasure_leaves_no_trace_of_the_number_in_any_table(service, db):
    client = service
    await store_traces_of(client, db, NUMBER, "Ada")
    await store_traces_of(client, db, OTHER, "Bob")
    await asyncio.sleep(0.3)  # the auto-replies' sends
    events_before = await db.fetchval("SELECT count(*) FROM message_events")
    assert await traces(db, needles_of(NUMBER))
    assert await traces(db, personal("Ada"))
    others_before = await traces(db, needles_of(OTHER))
    bobs_before = await traces(db, personal("Bob"))
    assert {"messages.to_number", "message_events.fields"} <= set(others_before)

    response = await client.delete(f"/v1/numbers/{NUMBER}")

    assert response.status_code == 200, response.text
    erasure = response.json()
    assert erasure["number_sha256"] == privacy.number_sha256(NUMBER)
    assert erasure["erased_by"] is None
    counts = erasure["counts"]
    assert counts["messages"] >= 5 and counts["message_events"] >= 7
    assert counts["discrepancies"] == 1 and counts["reconciliations"] == 1
    assert await traces(db, needles_of(NUMBER)) == {}
    bodies = await db.fetchval("SELECT count(*) FROM messages WHERE body LIKE '%code%'")
    assert bodies == 1  # the other number's
    assert await traces(db, personal("Ada")) == {}
    # Nothing of the other number went, and no event was deleted.
    assert await traces(db, needles_of(OTHER)) == others_before
    assert await traces(db, personal("Bob")) == bobs_before
    assert await db.fetchval("SELECT count(*) FROM message_events") == events_before
    stored = await db.fetchrow("SELECT number_sha256, counts FROM erasures")
    assert stored["number_sha256"] == privacy.number_sha256(NUMBER)
    assert NUMBER[1:] not in json.dumps(dict(stored))
    # The messages are still there, their statuses intact, the number blanked.
    found = (await client.get("/v1/messages", params={"status": "delivered"})).json()
    assert {m["to"] for m in found["messages"]} >= {repository.ERASED}

    again = await client.delete(f"/v1/numbers/whatsapp:{NUMBER}")
    assert again.status_code == 200
    assert set(again.json()["counts"].values()) == {0}
    assert again.json()["number_sha256"] == erasure["number_sha256"]


async def test_personal_data_of_the_number_goes_and_the_rest_of_its_messages_stays(client, db):
    sid = new_sid()
    await post(client, callback_fields(sid, "delivered", To=NUMBER, ProfileName="Ada",
                                       ErrorCode="30003"))  # fmt: skip
    await post(client, callback_fields(new_sid(), "delivered", To=OTHER, ProfileName="Bob"))

    assert (await client.delete(f"/v1/numbers/{NUMBER}")).status_code == 200

    message = await db.fetchrow("SELECT id, to_number, from_number, status FROM messages "
                                "WHERE sid = $1", sid)  # fmt: skip
    assert (message["to_number"], message["from_number"]) == (repository.ERASED, SENDER)
    assert message["status"] == "delivered"
    fields = await db.fetchval("SELECT fields FROM message_events WHERE message_id = $1",
                               message["id"])  # fmt: skip
    assert fields["To"] == repository.ERASED
    assert "ProfileName" not in fields
    assert (fields["MessageSid"], fields["From"], fields["ErrorCode"]) == (sid, SENDER, "30003")
    other = await db.fetchval("SELECT fields FROM message_events e JOIN messages m "
                              "ON m.id = e.message_id WHERE m.to_number = $1", OTHER)  # fmt: skip
    assert (other["To"], other["ProfileName"]) == (OTHER, "Bob")


async def test_opt_outs_are_kept_so_the_number_stays_opted_out(client, db):
    stop = {"MessageSid": new_sid("SM"), "AccountSid": ACCOUNT_SID, "From": NUMBER,
            "To": SENDER, "Body": "STOP"}  # fmt: skip
    await post(client, stop, path="/webhooks/twilio/inbound")
    scope = privacy.number_sha256(SENDER)
    assert await repository.is_opted_out(db, privacy.number_sha256(NUMBER), scope)

    erased = (await client.delete(f"/v1/numbers/{NUMBER}")).json()

    assert await repository.is_opted_out(db, privacy.number_sha256(NUMBER), scope)
    assert "opt_outs" not in erased["counts"]


async def test_what_is_not_a_number_is_refused(client):
    for wrong in ("hello", "+1", "+1415555010012345678", "%2B1415;DROP"):
        response = await client.delete(f"/v1/numbers/{wrong}")
        assert response.status_code == 422, wrong
        assert response.headers["content-type"] == "application/problem+json"
    assert (await client.delete(f"/v1/numbers/{NUMBER}", headers={"Authorization": ""})
            ).status_code == 401  # fmt: skip


async def test_the_event_log_stays_append_only_outside_an_erasure(client, db):
    await post(client, callback_fields(new_sid(), "delivered", To=NUMBER))
    event = await db.fetchval("SELECT id FROM message_events")
    for statement in (
        "UPDATE message_events SET fields = '{}' WHERE id = $1",
        "UPDATE message_events SET query = '{\"a\": 1}' WHERE id = $1",
        "DELETE FROM message_events WHERE id = $1",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(statement, event)
    # An erasure may blank fields and query, nothing else, and never delete.
    for statement in (
        "UPDATE message_events SET status = 'failed' WHERE id = $1",
        "UPDATE message_events SET received_at = now(), fields = '{}' WHERE id = $1",
        "DELETE FROM message_events WHERE id = $1",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            async with db.transaction():
                await db.execute("SET LOCAL status_tracker.erasure = on")
                await db.execute(statement, event)
    async with db.transaction():
        await db.execute("SET LOCAL status_tracker.erasure = on")
        await db.execute("UPDATE message_events SET fields = '{}' WHERE id = $1", event)
    assert await db.fetchval("SELECT fields FROM message_events WHERE id = $1", event) == {}
    # SET LOCAL ended with its transaction.
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE message_events SET fields = '{\"b\": 2}' WHERE id = $1", event)


def test_erase_number_command_erases_through_the_same_path(database_url, tmp_path):
    async def seed() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await repository.record_report(
                connection,
                StatusReport(
                    sid=new_sid(), status="delivered", error_code=None, to=NUMBER,
                    received_at=datetime.now(UTC), source="callback", fields={"To": NUMBER},
                    message_id=uuid4(),
                ),
            )  # fmt: skip
        finally:
            await connection.close()

    asyncio.run(seed())
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    environment.update({"DATABASE_URL": database_url,
                        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data")})  # fmt: skip
    done = subprocess.run([*COMMAND, "erase-number", NUMBER], env=environment,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert privacy.number_sha256(NUMBER) in done.stdout
    assert NUMBER not in done.stdout + done.stderr
    assert "message_events" in done.stdout

    async def stored() -> str:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch("SELECT to_number, (SELECT fields::text FROM "
                                          "message_events LIMIT 1) FROM messages")  # fmt: skip
            return json.dumps([list(row) for row in rows])
        finally:
            await connection.close()

    assert NUMBER not in asyncio.run(stored())
    refused = subprocess.run([*COMMAND, "erase-number", "nobody"], env=environment,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 1
    assert "E.164" in refused.stderr


async def test_an_erased_sender_leaves_the_rollups_counting_without_its_number(client, db):
    sender = "+15005550077"
    for status in ("sent", "delivered"):
        fields = callback_fields(new_sid(), status, From=sender, To="+447700900123")
        assert (await post(client, fields)).status_code == 204
    await repository.fold_rollup_deltas(db)
    before = await db.fetch(
        "SELECT breakdown, status, sum(messages) FROM message_rollups GROUP BY 1, 2 ORDER BY 1, 2"
    )
    found = await traces(db, needles_of(sender))
    assert {"messages.from_number", "message_events.fields", "message_rollups.value"} <= set(found)

    assert (await client.delete(f"/v1/numbers/{sender}")).status_code == 200

    assert await traces(db, needles_of(sender)) == {}
    await repository.fold_rollup_deltas(db)
    assert await traces(db, needles_of(sender)) == {}
    after = await db.fetch(
        "SELECT breakdown, status, sum(messages) FROM message_rollups GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert after == before  # still counted, under the erased sender
