"""Inbound messages: stored, answered with TwiML, replies tracked, opt-outs enforced."""

import xml.etree.ElementTree as ElementTree
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from twilio.twiml.messaging_response import MessagingResponse

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
