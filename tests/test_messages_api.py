"""Reading a message back: its status, its timeline, and who may read it."""

import uuid

from tests.support import API_KEY, callback_fields, new_sid, signed


async def send(client, sid, status, **extra):  # type: ignore[no-untyped-def]
    target, body, headers = signed(callback_fields(sid, status, **extra))
    response = await client.post(target, content=body, headers=headers)
    assert response.status_code == 204


async def test_message_with_its_timeline(client):
    sid = new_sid()
    await send(client, sid, "sent")
    await send(client, sid, "undelivered", ErrorCode="30003")
    await send(client, sid, "sent")  # late and stale
    await send(client, sid, "undelivered", ErrorCode="30003")  # duplicate

    response = await client.get(f"/v1/messages/{sid}")
    assert response.status_code == 200
    message = response.json()
    assert message["sid"] == sid
    assert message["status"] == "undelivered"
    assert message["error_code"] == 30003
    assert "unreachable" in message["error_description"]
    assert message["to"] == "+14155550100"
    assert message["from"] == "+15005550006"
    assert message["channel"] == "sms"
    assert message["sent_at"] is not None
    assert message["final_at"] is not None
    assert message["delivered_at"] is None
    assert message["created_at"] <= message["updated_at"]

    events = message["events"]
    assert [e["status"] for e in events] == ["sent", "undelivered", "sent", "undelivered"]
    assert [e["changed_status"] for e in events] == [True, True, False, False]
    assert all(e["source"] == "callback" for e in events)
    assert events[1]["error_code"] == 30003
    assert events[0]["received_at"] <= events[1]["received_at"]
    assert events[0]["fields"]["MessageSid"] == sid


async def test_message_by_local_id(client):
    sid = new_sid()
    await send(client, sid, "delivered")
    local_id = (await client.get(f"/v1/messages/{sid}")).json()["id"]
    response = await client.get(f"/v1/messages/{local_id}")
    assert response.status_code == 200
    assert response.json()["sid"] == sid


async def test_unknown_message_is_a_404_problem(client):
    for key in (new_sid(), str(uuid.uuid4())):
        response = await client.get(f"/v1/messages/{key}")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["title"] == "Not Found"


async def test_api_key_is_required(client):
    sid = new_sid()
    await send(client, sid, "sent")
    missing = await client.get(f"/v1/messages/{sid}", headers={"Authorization": ""})
    wrong = await client.get(f"/v1/messages/{sid}", headers={"Authorization": "Bearer nope"})
    right = await client.get(f"/v1/messages/{sid}", headers={"Authorization": f"Bearer {API_KEY}"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.headers["content-type"] == "application/problem+json"
    assert wrong.headers["www-authenticate"] == "Bearer"


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_openapi_has_bearer_auth_and_the_webhook(client):
    schema = (await client.get("/openapi.json")).json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    webhook = schema["paths"]["/webhooks/twilio/status"]["post"]
    assert "application/x-www-form-urlencoded" in webhook["requestBody"]["content"]
    assert "security" not in webhook
    assert (await client.get("/docs")).status_code == 200


async def test_unknown_route_is_a_problem(client):
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
