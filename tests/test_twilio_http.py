"""HttpxTwilioClient, against httpx.MockTransport."""

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.response import Response
from twilio.rest import Client

from status_tracker.twilio_http import HttpxTwilioClient

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
Handler = Callable[[httpx.Request], httpx.Response]


async def call(handler: Handler, *args: Any, **kwargs: Any) -> Response:
    client = HttpxTwilioClient(10.0, transport=httpx.MockTransport(handler))
    try:
        return await client.request(*args, **kwargs)
    finally:
        await client.close()


async def test_request_sends_params_form_and_auth_and_returns_the_sdk_response() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"sid": "SM1"}, headers={"Twilio-Request-Id": "RQ1"})

    response = await call(
        handler,
        "post",
        "https://api.twilio.com/2010-04-01/x.json",
        params={"PageSize": 2},
        data={"To": "+14155550100", "MediaUrl": ["a", "b"]},
        headers={"Accept": "application/json"},
        auth=(ACCOUNT_SID, "token"),
    )

    assert (response.status_code, json.loads(response.text), response.ok) == (
        201,
        {"sid": "SM1"},
        True,
    )
    assert response.headers["twilio-request-id"] == "RQ1"
    [request] = seen
    assert (request.method, request.url.params["PageSize"]) == ("POST", "2")
    assert parse_qsl(request.content.decode()) == [
        ("To", "+14155550100"),
        ("MediaUrl", "a"),
        ("MediaUrl", "b"),
    ]
    expected = base64.b64encode(f"{ACCOUNT_SID}:token".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"


@pytest.mark.parametrize(("per_call", "expected"), [(None, 7.0), (0.5, 0.5)])
async def test_timeout_is_the_clients_unless_the_call_gives_one(
    per_call: float | None, expected: float
) -> None:
    timeouts: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200)

    client = HttpxTwilioClient(7.0, transport=httpx.MockTransport(handler))
    try:
        await client.request("GET", "https://api.twilio.com/", timeout=per_call)
    finally:
        await client.close()

    assert timeouts == [dict.fromkeys(("connect", "read", "write", "pool"), expected)]


async def test_connection_error_propagates_after_one_attempt() -> None:
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(httpx.ConnectError):
        await call(handler, "POST", "https://api.twilio.com/", data={"To": "+14155550100"})
    assert attempts == 1


async def test_server_error_is_answered_not_retried() -> None:
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        return httpx.Response(503, text="unavailable")

    response = await call(handler, "POST", "https://api.twilio.com/")
    assert (response.status_code, attempts) == (503, 1)


async def test_redirects_are_followed_only_when_asked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(301, headers={"Location": "/new"})
        return httpx.Response(200)

    kept = await call(handler, "GET", "https://api.twilio.com/old")
    followed = await call(handler, "GET", "https://api.twilio.com/old", allow_redirects=True)
    assert (kept.status_code, followed.status_code) == (301, 200)


async def test_non_positive_timeouts_are_refused() -> None:
    with pytest.raises(ValueError):
        HttpxTwilioClient(0)
    with pytest.raises(ValueError):
        await call(lambda request: httpx.Response(200), "GET", "https://x/", timeout=-1)


async def test_sdk_calls_go_through_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Messages.json"):
            return httpx.Response(201, json={"sid": "SM" + "a" * 32, "status": "queued"})
        return httpx.Response(
            404,
            json={"code": 20404, "message": "not found", "more_info": "", "status": 404},
        )

    http = HttpxTwilioClient(transport=httpx.MockTransport(handler))
    client = Client(ACCOUNT_SID, "token", http_client=http)
    try:
        created = await client.messages.create_async(to="+14155550100", from_="+1500", body="hi")
        with pytest.raises(TwilioRestException) as missing:
            await client.messages("SM" + "b" * 32).fetch_async()
    finally:
        await http.close()

    assert (created.sid, created.status) == ("SM" + "a" * 32, "queued")
    assert (missing.value.status, missing.value.code) == (404, 20404)
