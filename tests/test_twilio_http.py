"""HttpxTwilioClient, against httpx.MockTransport."""

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.response import Response
from twilio.rest import Client

from status_tracker.twilio_http import HttpxTwilioClient, RetryPolicy, retry_after_seconds

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


def flaky(answers: list[httpx.Response]) -> tuple[Handler, list[httpx.Request]]:
    """A handler giving these answers in turn, then 200 with an empty list page."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= len(answers):
            return answers[len(seen) - 1]
        return httpx.Response(200, json={"messages": [], "next_page_uri": None})

    return handler, seen


def recording_client(
    handler: Handler, policy: RetryPolicy
) -> tuple[HttpxTwilioClient, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    client = HttpxTwilioClient(
        transport=httpx.MockTransport(handler), get_retry=policy, sleep=sleep
    )
    return client, waits


async def test_a_list_page_answered_429_then_503_is_retried_with_backoff_honouring_retry_after() -> (
    None
):
    handler, seen = flaky([
        httpx.Response(429, json={"code": 20429, "status": 429}, headers={"Retry-After": "3"}),
        httpx.Response(503, text="unavailable"),
    ])  # fmt: skip
    http, waits = recording_client(handler, RetryPolicy(backoff_seconds=0.01))
    try:
        page = await Client(ACCOUNT_SID, "token", http_client=http).messages.page_async()
    finally:
        await http.close()
    assert list(page) == []
    assert len(seen) == 3
    assert waits[0] >= 3.0
    assert 0 < waits[1] <= 0.02


async def test_gets_give_up_at_the_budget_and_the_sdk_sees_the_last_answer() -> None:
    handler, seen = flaky([httpx.Response(429, json={"code": 20429, "status": 429})] * 100)
    http, waits = recording_client(handler, RetryPolicy(attempts=4, backoff_seconds=0.01))
    client = Client(ACCOUNT_SID, "token", http_client=http)
    try:
        with pytest.raises(TwilioException):
            await client.messages.page_async()
        with pytest.raises(TwilioRestException) as fetched:
            await client.messages("SM" + "b" * 32).fetch_async()
    finally:
        await http.close()
    assert fetched.value.status == 429
    assert len(seen) == 10 and len(waits) == 8

    handler, seen = flaky([httpx.Response(503, headers={"Retry-After": "10"})] * 100)
    http, waits = recording_client(handler, RetryPolicy(budget_seconds=25, max_wait_seconds=10))
    try:
        response = await http.request("GET", "https://api.twilio.com/x.json")
    finally:
        await http.close()
    assert (response.status_code, waits) == (503, [10.0, 10.0])


async def test_a_post_answered_429_or_503_is_not_retried_by_the_http_client() -> None:
    for status in (429, 503):
        handler, seen = flaky([httpx.Response(status)] * 3)
        http, waits = recording_client(handler, RetryPolicy())
        try:
            response = await http.request("POST", "https://api.twilio.com/x.json", data={})
        finally:
            await http.close()
        assert (response.status_code, len(seen), waits) == (status, 1, [])


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Fri, 04 Dec 2026 06:00:05 GMT", now) == 5.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None
