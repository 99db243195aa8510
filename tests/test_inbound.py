"""Inbound messages: stored, answered with TwiML, replies tracked, opt-outs enforced."""

import asyncio
import xml.etree.ElementTree as ElementTree
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from twilio.twiml.messaging_response import MessagingResponse

from status_tracker.database import downgrade, migrate
from status_tracker.privacy import number_sha256
from tests.conftest import Simulator, app_client
from tests.support import ACCOUNT_SID, AUTH_TOKEN, callback_fields, new_sid, signed

INBOUND = "/webhooks/twilio/inbound"


def inbound_fields(
    sid: str, body: str, sender: str = "+14155550123", **extra: str
) -> dict[str, str]:
    fields = {
        "MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": ACCOUNT_SID,
        "From": sender, "To": "+15005550006", "Body": body, "NumMedia": "0", "NumSegments": "1",
        "FromCity": "SAN FRANCISCO", "FromCountry": "US", "ApiVersion": "2010-04-01",
    }  # fmt: skip
    fields.update(extra)
    return fields


@pytest.fixture
async def replying(settings, tmp_path):
    """The app with an auto-reply, sending through a real simulator."""
    simulator = Simulator(tmp_path, "--delay-min", "0", "--delay-max", "0.05")
    configured = settings.model_copy(update={
        "auto_reply": "Hi $from, we got: $body",
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_api_base_url": simulator.url,
        "twilio_from": "+15005550006",
    })  # fmt: skip
    try:
        async with app_client(configured) as client:
            yield client
    finally:
        simulator.close()


async def post_inbound(client, fields):  # type: ignore[no-untyped-def]
    target, body, headers = signed(fields, path=INBOUND)
    return await client.post(target, content=body, headers=headers)


async def test_inbound_is_stored_and_answered_with_empty_twiml(client, db):
    sid = new_sid("MM")
    fields = inbound_fields(sid, "hello", NumMedia="1", MediaUrl0="https://api.twilio.com/m.jpg",
                            MediaContentType0="image/jpeg")  # fmt: skip
    response = await post_inbound(client, fields)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text == str(MessagingResponse())
    row = await db.fetchrow("SELECT * FROM messages WHERE sid = $1", sid)
    assert (row["direction"], row["status"], row["body"]) == ("inbound", "received", "hello")
    assert (row["from_number"], row["to_number"]) == ("+14155550123", "+15005550006")
    assert row["media_urls"] == ["https://api.twilio.com/m.jpg"]
    event = await db.fetchrow("SELECT source, fields FROM message_events")
    assert event["source"] == "inbound"
    assert event["fields"]["FromCity"] == "SAN FRANCISCO"
    assert event["fields"]["MediaContentType0"] == "image/jpeg"


async def test_a_repeated_media_url_is_stored_as_urls_not_as_a_list_repr(client, db):
    sid = new_sid("MM")
    pairs = [*inbound_fields(sid, "two", NumMedia="1").items(),
             ("MediaUrl0", "https://api.twilio.com/a.jpg"),
             ("MediaUrl0", "https://api.twilio.com/b.jpg")]  # fmt: skip
    target, body, headers = signed(pairs, path=INBOUND)
    assert (await client.post(target, content=body, headers=headers)).status_code == 200
    row = await db.fetchrow("SELECT media_urls FROM messages WHERE sid = $1", sid)
    assert row["media_urls"] == ["https://api.twilio.com/a.jpg", "https://api.twilio.com/b.jpg"]


async def test_inbound_is_refused_without_signature_or_sender(client, db):
    target, body, headers = signed(inbound_fields(new_sid(), "x"), path=INBOUND, token="wrong")
    assert (await client.post(target, content=body, headers=headers)).status_code == 403
    fields = inbound_fields(new_sid(), "x")
    del fields["From"]
    assert (await post_inbound(client, fields)).status_code == 400
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_reply_is_recorded_and_its_callbacks_land_on_it(replying, db):
    sid = new_sid()
    response = await post_inbound(replying, inbound_fields(sid, "ping"))
    root = ElementTree.fromstring(response.text)
    assert root.tag == "Response"
    (message,) = list(root)
    assert message.tag == "Message"
    assert message.text == "Hi +14155550123, we got: ping"
    assert message.get("method") == "POST"
    expected = MessagingResponse()
    expected.message(message.text, action=message.get("action"), method="POST")
    assert response.text == str(expected)

    inbound_id = await db.fetchval("SELECT id FROM messages WHERE sid = $1", sid)
    reply = await db.fetchrow("SELECT * FROM messages WHERE in_reply_to = $1", inbound_id)
    assert (reply["direction"], reply["status"], reply["sid"]) == (
        "outbound-reply",
        "pending",
        None,
    )
    assert reply["to_number"] == "+14155550123"

    action = urlsplit(message.get("action"))
    assert action.query == f"mid={reply['id']}"
    reply_sid = new_sid()
    for status in ("sent", "delivered"):
        target, body, headers = signed(
            callback_fields(reply_sid, status, To="+14155550123"),
            path=action.path, query=action.query,
        )  # fmt: skip
        assert (await replying.post(target, content=body, headers=headers)).status_code == 204
    landed = await db.fetchrow("SELECT sid, status FROM messages WHERE id = $1", reply["id"])
    assert (landed["sid"], landed["status"]) == (reply_sid, "delivered")
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_a_retried_inbound_gets_the_same_reply_once(replying, db):
    fields = inbound_fields(new_sid(), "again")
    first = await post_inbound(replying, fields)
    second = await post_inbound(replying, fields)
    assert first.text == second.text
    assert await db.fetchval("SELECT count(*) FROM messages") == 2  # one inbound, one reply


async def test_stop_is_enforced_and_start_lifts_it(replying, db):
    number = "+14155550123"
    stop = await post_inbound(replying, inbound_fields(new_sid(), " stop ", sender=number))
    assert stop.text == str(MessagingResponse())  # Twilio answers STOP itself
    refused = await replying.post("/v1/messages", json={"to": number, "body": "promo"})
    assert refused.status_code == 400
    problem = refused.json()
    assert problem["twilio_code"] == 21610
    assert "STOP" in problem["error_description"]
    stored = await db.fetchrow(
        "SELECT status, error_code, send_outcome FROM messages WHERE id = $1::uuid",
        problem["message_id"],
    )
    assert tuple(stored) == ("failed", 21610, "refused")
    assert await db.fetchval("SELECT count(*) FROM opt_outs") == 1
    assert number not in str(await db.fetch("SELECT * FROM opt_outs"))

    await post_inbound(replying, inbound_fields(new_sid(), "START", sender=number))
    allowed = await replying.post("/v1/messages", json={"to": number, "body": "welcome back"})
    assert allowed.status_code == 201, allowed.text


async def test_inbound_does_not_need_the_api_key(client):
    response = await post_inbound(client, inbound_fields(new_sid(), "hi"))
    assert response.status_code == 200
    assert SecretStr(AUTH_TOKEN).get_secret_value() not in response.text


SERVICE = "MG" + "1" * 32
OTHER_SERVICE = "MG" + "2" * 32
RECIPIENT = "+14155550123"


async def send(client, **message: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    return await client.post("/v1/messages", json={"to": RECIPIENT, "body": "promo", **message})


async def test_an_opt_out_holds_for_the_sender_number_it_was_sent_to_only(replying):
    await post_inbound(replying, inbound_fields(new_sid(), "STOP", sender=RECIPIENT))
    refused = await send(replying)  # from TWILIO_FROM, the number the STOP went to
    assert (refused.status_code, refused.json()["twilio_code"]) == (400, 21610)
    assert (await send(replying, **{"from": "+15005550099"})).status_code == 201
    assert (await send(replying, messaging_service_sid=SERVICE)).status_code == 201


async def test_an_opt_out_through_a_messaging_service_holds_for_that_service(replying):
    stop = inbound_fields(new_sid(), "stop", sender=RECIPIENT, To="+15017122661",
                          MessagingServiceSid=SERVICE)  # fmt: skip
    await post_inbound(replying, stop)
    refused = await send(replying, messaging_service_sid=SERVICE)
    assert (refused.status_code, refused.json()["twilio_code"]) == (400, 21610)
    assert (await send(replying, messaging_service_sid=OTHER_SERVICE)).status_code == 201
    assert (await send(replying)).status_code == 201
    # The pool number the STOP went to, sending alone, is still that service's number.
    assert (await send(replying, **{"from": "+15017122661"})).status_code == 400
    start = inbound_fields(new_sid(), "START", sender=RECIPIENT, To="+15017122661",
                           MessagingServiceSid=SERVICE)  # fmt: skip
    await post_inbound(replying, start)
    assert (await send(replying, messaging_service_sid=SERVICE)).status_code == 201
    assert (await send(replying, **{"from": "+15017122661"})).status_code == 201


async def test_advanced_opt_out_types_are_honoured_and_help_gets_no_auto_reply(replying, db):
    empty = str(MessagingResponse())
    arret = inbound_fields(new_sid(), "ARRET", sender=RECIPIENT, OptOutType="STOP")
    assert (await post_inbound(replying, arret)).text == empty
    assert (await send(replying)).status_code == 400
    for help_ in (inbound_fields(new_sid(), "AIDE", sender=RECIPIENT, OptOutType="HELP"),
                  inbound_fields(new_sid(), "info", sender=RECIPIENT),
                  inbound_fields(new_sid(), "HELP", sender=RECIPIENT)):  # fmt: skip
        assert (await post_inbound(replying, help_)).text == empty
    assert (await send(replying)).status_code == 400  # HELP changes nothing
    demarrer = inbound_fields(new_sid(), "DEMARRER", sender=RECIPIENT, OptOutType="START")
    assert (await post_inbound(replying, demarrer)).text == empty
    assert (await send(replying)).status_code == 201
    # An ordinary message still gets the auto-reply; no reply was stored for the keywords.
    assert "<Message" in (await post_inbound(replying, inbound_fields(new_sid(), "hello"))).text
    assert (
        await db.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound-reply'") == 1
    )


async def test_a_21610_from_twilio_records_the_opt_out(replying, db):
    opted_out_at_twilio = "+14155550003"  # the simulator answers 21610
    first = await replying.post("/v1/messages", json={"to": opted_out_at_twilio, "body": "b"})
    assert (first.status_code, first.json()["twilio_code"]) == (400, 21610)
    assert await db.fetchval("SELECT keyword FROM opt_outs WHERE opted_out") == "21610"
    second = await replying.post("/v1/messages", json={"to": opted_out_at_twilio, "body": "b"})
    assert (second.status_code, second.json()["twilio_code"]) == (400, 21610)
    events = await db.fetch(
        "SELECT fields FROM message_events WHERE message_id = $1::uuid",
        second.json()["message_id"],
    )
    # Refused here, not sent to Twilio again.
    assert any(event["fields"].get("refused_locally") for event in events)


async def test_opt_outs_from_before_scopes_hold_for_every_sender_across_the_upgrade(
    database_url, settings, tmp_path
):
    await asyncio.to_thread(downgrade, database_url, "2026_12_04_layout")
    connection = await asyncpg.connect(database_url)
    try:
        message_id = await connection.fetchval(
            "INSERT INTO messages (status, status_rank) VALUES ('received', 130) RETURNING id"
        )
        await connection.execute(
            "INSERT INTO opt_outs (number_sha256, opted_out, keyword, changed_at, message_id) "
            "VALUES ($1, true, 'STOP', now() - interval '1 day', $2)",
            number_sha256(RECIPIENT), message_id,
        )  # fmt: skip
        await asyncio.to_thread(migrate, database_url)
        simulator = Simulator(tmp_path, "--delay-min", "0", "--delay-max", "0.05")
        configured = settings.model_copy(update={
            "twilio_account_sid": ACCOUNT_SID, "twilio_api_base_url": simulator.url,
            "twilio_from": "+15005550006",
        })  # fmt: skip
        try:
            async with app_client(configured) as client:
                assert (await send(client)).status_code == 400
                assert (await send(client, messaging_service_sid=SERVICE)).status_code == 400
                # A STOP to one sender, then START to another: the old opt-out is lifted.
                await post_inbound(client, inbound_fields(new_sid(), "STOP", sender=RECIPIENT))
                start = inbound_fields(new_sid(), "START", sender=RECIPIENT, To="+15005550099")
                await post_inbound(client, start)
                assert (await send(client, **{"from": "+15005550099"})).status_code == 201
                assert (await send(client)).status_code == 400
        finally:
            simulator.close()
        assert await connection.fetchval("SELECT count(*) FROM opt_outs") == 3
        await asyncio.to_thread(downgrade, database_url, "2026_12_04_layout")
        # One row a number; an opt-out kept over an opt-in.
        rows = await connection.fetch("SELECT number_sha256, opted_out FROM opt_outs")
        assert [tuple(row) for row in rows] == [(number_sha256(RECIPIENT), True)]
    finally:
        await connection.close()
