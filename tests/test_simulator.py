"""The Twilio simulator, over real HTTP: the real SDK calls it and a real server takes callbacks."""

import asyncio
import contextlib
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from status_tracker.simulator import (
    CALLBACK_CONCURRENCY,
    Simulator,
    SimulatorConfig,
    create_simulator_app,
)
from status_tracker.twilio_http import HttpxTwilioClient

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "f00dfeedf00dfeedf00dfeedf00dfeed"
SERVICE_SID = "MG" + "fedcba9876543210" * 2
SENDER = "+15005550006"
FAST = {
    "account_sid": ACCOUNT_SID,
    "auth_token": AUTH_TOKEN,
    "seed": 7,
    "callback_delay_min": 0.001,
    "callback_delay_max": 0.005,
    "create_timeout_seconds": 5.0,
    "callback_timeout_seconds": 2.0,
}
RFC_2822 = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000")


class Servers:
    """ASGI apps on uvicorn on free ports of 127.0.0.1, all stopped together (uvicorn polls)."""

    def __init__(self) -> None:
        self._running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(self, app: Any) -> str:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, ws="none", http="h11", log_level="warning"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        self._running.append((server, task))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        for server, _ in self._running:
            server.should_exit = True
        await asyncio.gather(*(task for _, task in self._running))


@dataclass
class Callback:
    path: str
    params: dict[str, str]
    token: str | None
    signed: bool


@dataclass
class Receiver:
    """The service's side of status callbacks: records each one and checks its signature."""

    base_url: str = ""
    calls: list[Callback] = field(default_factory=list)
    failed_tokens: set[str | None] = field(default_factory=set)

    async def receive(self, request: Request) -> Response:
        params = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        query = request.url.query
        url = self.base_url + request.url.path + (f"?{query}" if query else "")
        signature = request.headers.get("X-Twilio-Signature", "")
        signed = RequestValidator(AUTH_TOKEN).validate(url, params, signature)
        token = request.headers.get("I-Twilio-Idempotency-Token")
        self.calls.append(Callback(request.url.path, params, token, signed))
        if request.url.path == "/slow":
            await asyncio.sleep(0.5)
        if request.url.path == "/fails":
            return Response(status_code=500)
        if request.url.path == "/fails-once" and token not in self.failed_tokens:
            self.failed_tokens.add(token)
            return Response(status_code=503)
        return Response(status_code=204)

    def url(self, path: str = "/status") -> str:
        return self.base_url + path

    def received(self, sid: str) -> list[Callback]:
        calls = [call for call in self.calls if call.params["MessageSid"] == sid]
        assert all(call.signed for call in calls)
        return calls

    def statuses(self, sid: str) -> list[str]:
        return [call.params["MessageStatus"] for call in self.received(sid)]


@dataclass
class Twilio:
    simulator: Simulator
    client: Client
    base_url: str

    async def create(self, to: str, **fields: Any) -> Any:
        fields.setdefault("from_", SENDER)
        fields.setdefault("body", "Your order has shipped")
        return await self.client.messages.create_async(to=to, **fields)

    async def fetch(self, sid: str) -> Any:
        return await self.client.messages(sid).fetch_async()


StartTwilio = Callable[..., Awaitable[Twilio]]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    servers = Servers()
    try:
        yield servers
    finally:
        await servers.stop()


@pytest.fixture
async def start_twilio(servers: Servers) -> AsyncIterator[StartTwilio]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(client_timeout: float = 5.0, **settings: Any) -> Twilio:
            app = create_simulator_app(SimulatorConfig(**{**FAST, **settings}))
            base_url = await servers.start(app)
            http = HttpxTwilioClient(timeout=client_timeout)
            stack.push_async_callback(http.close)
            client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http)
            client.api.base_url = base_url
            return Twilio(app.state.simulator, client, base_url)

        yield start


@pytest.fixture
async def twilio(start_twilio: StartTwilio) -> Twilio:
    return await start_twilio()


@pytest.fixture
async def receiver(servers: Servers) -> Receiver:
    receiver = Receiver()
    app = Starlette(routes=[Route("/{path:path}", receiver.receive, methods=["POST"])])
    receiver.base_url = await servers.start(app)
    return receiver


async def test_plain_send_is_queued_then_sent_and_delivered(
    twilio: Twilio, receiver: Receiver
) -> None:
    message = await twilio.create("+14155550100", status_callback=receiver.url("/status?ref=42"))

    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert (message.status, message.num_segments, message.date_sent) == ("queued", "1", None)
    await twilio.simulator.drain()
    assert receiver.statuses(message.sid) == ["sent", "delivered"]
    delivered = receiver.received(message.sid)[-1].params
    assert re.fullmatch(r"\d{10}", delivered.pop("RawDlrDoneDate"))
    assert delivered == {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "From": SENDER,
        "MessageSid": message.sid,
        "MessageStatus": "delivered",
        "SmsSid": message.sid,
        "SmsStatus": "delivered",
        "To": "+14155550100",
    }
    fetched = await twilio.fetch(message.sid)
    assert (fetched.status, fetched.error_code, fetched.price) == ("delivered", None, "-0.00790")
    assert fetched.date_sent is not None


@pytest.mark.parametrize(
    ("to", "statuses", "error_code"),
    [
        ("+14155550001", ["sent", "undelivered"], 30003),
        # Carrier filtering comes after sending: `undelivered`, as Twilio reports it.
        ("+14155550002", ["sent", "undelivered"], 30007),
        ("+14155550005", ["sent"], None),
        ("+14155550010", ["failed"], 30001),
        # One message reported both ways: a segment of several failed.
        ("+14155550011", ["sent", "delivered", "undelivered"], 30003),
        ("whatsapp:+14155550100", ["sent", "delivered", "read"], None),
        ("rcs:+14155550100", ["sent", "delivered", "read"], None),
    ],
)
async def test_outcome_follows_the_last_four_digits_of_to(
    twilio: Twilio, receiver: Receiver, to: str, statuses: list[str], error_code: int | None
) -> None:
    channel = to.partition(":")[0] + ":" if ":" in to else ""
    message = await twilio.create(to, from_=channel + SENDER, status_callback=receiver.url())
    await twilio.simulator.drain()

    assert receiver.statuses(message.sid) == statuses
    last = receiver.received(message.sid)[-1].params
    assert last.get("ErrorCode") == (str(error_code) if error_code else None)
    fetched = await twilio.fetch(message.sid)
    assert (fetched.status, fetched.error_code) == (statuses[-1], error_code)


async def test_whatsapp_callbacks_carry_channel_fields_and_read_event(
    twilio: Twilio, receiver: Receiver
) -> None:
    message = await twilio.create(
        "whatsapp:+14155550100", from_="whatsapp:" + SENDER, status_callback=receiver.url()
    )
    await twilio.simulator.drain()

    calls = receiver.received(message.sid)
    assert all(call.params["ChannelPrefix"] == "whatsapp" for call in calls)
    assert all("RawDlrDoneDate" not in call.params for call in calls)
    sent, delivered, read = (call.params for call in calls)
    assert (sent["StructuredMessage"], "EventType" in sent) == ("false", False)
    assert (delivered["EventType"], read["EventType"]) == ("DELIVERED", "READ")
    assert re.fullmatch(r"XE[0-9a-f]{32}", calls[-1].params["ChannelInstallSid"])


@pytest.mark.parametrize(
    ("to", "status", "code"),
    [("+14155550003", 400, 21610), ("+14155550004", 400, 21211), ("+14155550006", 500, 20500)],
)
async def test_refused_create_creates_nothing(
    twilio: Twilio, to: str, status: int, code: int
) -> None:
    with pytest.raises(TwilioRestException) as refused:
        await twilio.create(to)

    assert (refused.value.status, refused.value.code) == (status, code)
    assert twilio.simulator.messages == {}


async def test_throttled_number_is_refused_twice_then_sent(
    twilio: Twilio, receiver: Receiver
) -> None:
    for _ in range(2):
        with pytest.raises(TwilioRestException) as refused:
            await twilio.create("+14155550008")
        assert (refused.value.status, refused.value.code) == (429, 20429)

    message = await twilio.create("+14155550008", status_callback=receiver.url())
    await twilio.simulator.drain()
    assert receiver.statuses(message.sid) == ["sent", "delivered"]
    assert list(twilio.simulator.messages) == [message.sid]


async def test_create_that_times_out_still_sends_the_message(
    start_twilio: StartTwilio, receiver: Receiver
) -> None:
    twilio = await start_twilio(client_timeout=0.3)
    started = time.monotonic()

    with pytest.raises(httpx.TimeoutException):
        await twilio.create("+14155550007", status_callback=receiver.url())

    assert time.monotonic() - started < 2
    await twilio.simulator.drain()
    [message] = twilio.simulator.messages.values()
    assert message.status == "delivered"
    assert receiver.statuses(message.sid) == ["sent", "delivered"]
    listed = await twilio.client.messages.list_async(to="+14155550007")
    assert [found.sid for found in listed] == [message.sid]


async def test_call_timeout_overrides_the_client_default(twilio: Twilio) -> None:
    http = HttpxTwilioClient(timeout=30)
    url = f"{twilio.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    started = time.monotonic()
    try:
        with pytest.raises(httpx.ReadTimeout):
            await http.request(
                "POST",
                url,
                data={"To": "+14155550007", "From": SENDER, "Body": "hi"},
                auth=(ACCOUNT_SID, AUTH_TOKEN),
                timeout=0.2,
            )
    finally:
        await http.close()
    assert time.monotonic() - started < 2
    await twilio.simulator.drain()


async def test_service_send_is_accepted_then_queued(twilio: Twilio, receiver: Receiver) -> None:
    message = await twilio.create(
        "+14155550100",
        from_=None,
        messaging_service_sid=SERVICE_SID,
        status_callback=receiver.url(),
    )

    assert (message.status, message.from_, message.num_segments) == ("accepted", None, "0")
    await twilio.simulator.drain()
    assert receiver.statuses(message.sid) == ["queued", "sent", "delivered"]
    calls = receiver.received(message.sid)
    assert {call.params["MessagingServiceSid"] for call in calls} == {SERVICE_SID}
    fetched = await twilio.fetch(message.sid)
    assert (fetched.from_, fetched.num_segments) == ("+15017122661", "1")


async def test_media_message_gets_an_mm_sid(twilio: Twilio) -> None:
    message = await twilio.create(
        "+14155550100", body=None, media_url=["https://example.com/a.png", "https://example.com/b"]
    )

    assert message.sid.startswith("MM")
    assert message.num_media == "2"
    await twilio.simulator.drain()


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"to": ""}, 21604),
        ({"to": "415-555-0100"}, 21211),
        ({"from_": None}, 21603),
        ({"messaging_service_sid": "MG123"}, 21701),
        ({"body": None}, 21619),
        ({"body": "x" * 1601}, 21617),
        ({"status_callback": "http://my_host/status"}, 21609),
        ({"schedule_type": "fixed", "send_at": timedelta(minutes=10)}, 35118),
        ({"from_": None, "messaging_service_sid": SERVICE_SID, "schedule_type": "fixed"}, 35111),
        (
            {
                "messaging_service_sid": SERVICE_SID,
                "schedule_type": "fixed",
                "send_at": timedelta(minutes=1),
            },
            35114,
        ),
    ],
)
async def test_invalid_create_is_refused_like_twilio(
    twilio: Twilio, changes: dict[str, Any], code: int
) -> None:
    fields = {"to": "+14155550100", "from_": SENDER, "body": "hi", **changes}
    fields = {
        name: datetime.now(UTC) + value if isinstance(value, timedelta) else value
        for name, value in fields.items()
        if value is not None
    }

    with pytest.raises(TwilioRestException) as refused:
        await twilio.client.messages.create_async(**fields)

    assert (refused.value.status, refused.value.code) == (400, code)
    assert twilio.simulator.messages == {}


async def test_wrong_credentials_are_refused_with_20003(twilio: Twilio) -> None:
    intruder = Client(ACCOUNT_SID, "0" * 32, http_client=twilio.client.http_client)
    intruder.api.base_url = twilio.base_url

    with pytest.raises(TwilioRestException) as refused:
        await intruder.messages.create_async(to="+14155550100", from_=SENDER, body="hi")

    assert (refused.value.status, refused.value.code) == (401, 20003)
    assert twilio.simulator.messages == {}


async def test_fetch_answers_twilio_json_and_404_for_unknown_sid(twilio: Twilio) -> None:
    message = await twilio.create("+14155550100")
    await twilio.simulator.drain()

    async with httpx.AsyncClient(base_url=twilio.base_url, auth=(ACCOUNT_SID, AUTH_TOKEN)) as http:
        found = (await http.get(message.uri)).json()
        missing = await http.get(message.uri.replace(message.sid, "SM" + "0" * 32))
    assert set(found) == {
        "account_sid", "api_version", "body", "date_created", "date_sent", "date_updated",
        "direction", "error_code", "error_message", "from", "messaging_service_sid", "num_media",
        "num_segments", "price", "price_unit", "sid", "status", "subresource_uris", "to", "uri",
    }  # fmt: skip
    assert found["direction"] == "outbound-api"
    assert all(RFC_2822.fullmatch(found[name]) for name in ("date_created", "date_sent"))
    assert missing.status_code == 404
    assert missing.json()["code"] == 20404
    assert missing.json()["more_info"] == "https://www.twilio.com/docs/errors/20404"


async def test_list_pages_through_everything_newest_first(twilio: Twilio) -> None:
    sids = [(await twilio.create(f"+1415555{n:04d}")).sid for n in range(100, 107)]
    await twilio.simulator.drain()

    listed = await twilio.client.messages.list_async(page_size=3)
    streamed = await twilio.client.messages.stream_async(page_size=2, limit=5)

    assert [message.sid for message in listed] == sids[::-1]
    assert [message.sid async for message in streamed] == sids[::-1][:5]


async def test_list_envelope_links_pages_both_ways(twilio: Twilio) -> None:
    for n in range(100, 105):
        await twilio.create(f"+1415555{n:04d}")
    await twilio.simulator.drain()

    async with httpx.AsyncClient(base_url=twilio.base_url, auth=(ACCOUNT_SID, AUTH_TOKEN)) as http:
        path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        first = (await http.get(path, params={"PageSize": 2})).json()
        second = (await http.get(first["next_page_uri"])).json()
        back = (await http.get(second["previous_page_uri"])).json()

    assert set(first) == {
        "messages", "first_page_uri", "next_page_uri", "previous_page_uri", "page", "page_size",
        "start", "end", "uri",
    }  # fmt: skip
    assert (first["page"], first["start"], first["end"], first["previous_page_uri"]) == (
        0,
        0,
        1,
        None,
    )
    assert (second["page"], second["start"], second["end"]) == (1, 2, 3)
    assert back["messages"] == first["messages"]


async def test_list_filters_by_to_from_and_date_sent(twilio: Twilio) -> None:
    other = "+15005550009"
    a = await twilio.create("+14155550100")
    b = await twilio.create("+14155550200")
    c = await twilio.create("+14155550100", from_=other)
    await twilio.simulator.drain()
    now = datetime.now(UTC)

    async def sids(**filters: Any) -> set[str]:
        return {message.sid for message in await twilio.client.messages.list_async(**filters)}

    assert await sids(to="+14155550100") == {a.sid, c.sid}
    assert await sids(from_=other) == {c.sid}
    assert await sids(to="+14155550100", from_=SENDER) == {a.sid}
    window = {"date_sent_after": now - timedelta(minutes=1), "date_sent_before": now}
    assert await sids(**window) == {a.sid, b.sid, c.sid}
    assert await sids(date_sent_after=now + timedelta(minutes=1)) == set()
    assert await sids(date_sent=now) == {a.sid, b.sid, c.sid}


async def test_scheduled_message_goes_at_send_at(
    start_twilio: StartTwilio, receiver: Receiver
) -> None:
    twilio = await start_twilio(time_scale=0.001)  # SendAt 310 s ahead comes in 0.31 s
    message = await twilio.create(
        "+14155550100",
        messaging_service_sid=SERVICE_SID,
        schedule_type="fixed",
        send_at=datetime.now(UTC) + timedelta(seconds=310),
        status_callback=receiver.url(),
    )

    assert message.status == "scheduled"
    unsent = await twilio.client.messages.list_async(
        date_sent_after=datetime.now(UTC) - timedelta(minutes=1)
    )
    assert unsent == []
    await twilio.simulator.drain()
    assert receiver.statuses(message.sid) == ["queued", "sent", "delivered"]


async def test_scheduled_message_can_be_canceled_once(twilio: Twilio, receiver: Receiver) -> None:
    message = await twilio.create(
        "+14155550100",
        messaging_service_sid=SERVICE_SID,
        schedule_type="fixed",
        send_at=datetime.now(UTC) + timedelta(minutes=10),
        status_callback=receiver.url(),
    )

    canceled = await twilio.client.messages(message.sid).update_async(status="canceled")
    with pytest.raises(TwilioRestException) as refused:
        await twilio.client.messages(message.sid).update_async(status="canceled")

    assert canceled.status == "canceled"
    assert (refused.value.status, refused.value.code) == (400, 30409)
    await twilio.simulator.drain()
    assert receiver.statuses(message.sid) == ["canceled"]
    assert twilio.simulator.messages[message.sid].history == ["scheduled", "canceled"]


async def test_lost_callbacks_still_change_the_status(
    start_twilio: StartTwilio, receiver: Receiver
) -> None:
    twilio = await start_twilio(loss_probability=1.0)
    message = await twilio.create("+14155550100", status_callback=receiver.url())
    await twilio.simulator.drain()

    assert receiver.calls == []
    assert (await twilio.fetch(message.sid)).status == "delivered"
    assert [record.outcome for record in twilio.simulator.callbacks] == ["dropped", "dropped"]


async def test_duplicated_callbacks_arrive_twice_each_with_its_own_token(
    start_twilio: StartTwilio, receiver: Receiver
) -> None:
    twilio = await start_twilio(duplicate_probability=1.0)
    message = await twilio.create("+14155550100", status_callback=receiver.url())
    await twilio.simulator.drain()

    assert receiver.statuses(message.sid) == ["sent", "sent", "delivered", "delivered"]
    assert len({call.token for call in receiver.calls}) == 4


async def test_reordered_callbacks_arrive_out_of_order(
    start_twilio: StartTwilio, receiver: Receiver
) -> None:
    twilio = await start_twilio(reorder_probability=1.0)
    message = await twilio.create(
        "whatsapp:+14155550100", from_="whatsapp:" + SENDER, status_callback=receiver.url()
    )
    await twilio.simulator.drain()

    received = receiver.statuses(message.sid)
    assert sorted(received) == ["delivered", "read", "sent"]
    assert received != ["sent", "delivered", "read"]
    assert twilio.simulator.messages[message.sid].status == "read"


async def test_same_seed_gives_the_same_sids_and_faults(
    start_twilio: StartTwilio, receiver: Receiver
) -> None:
    faults = {"duplicate_probability": 0.4, "loss_probability": 0.3, "reorder_probability": 0.5}
    runs = []
    for _ in range(2):
        twilio = await start_twilio(seed=11, **faults)
        receiver.calls.clear()
        messages = [
            await twilio.create(f"+1415555{n:04d}", status_callback=receiver.url())
            for n in range(100, 108)
        ]
        await twilio.simulator.drain()
        runs.append([(m.sid, receiver.statuses(m.sid)) for m in messages])

    assert runs[0] == runs[1]


async def test_status_moves_on_while_a_callback_is_slow(twilio: Twilio, receiver: Receiver) -> None:
    message = await twilio.create("+14155550100", status_callback=receiver.url("/slow"))
    await asyncio.sleep(0.3)  # the receiver holds the `sent` callback for 0.5 s

    assert twilio.simulator.messages[message.sid].status == "delivered"
    assert len(receiver.calls) == 1
    await twilio.simulator.drain()
    assert receiver.statuses(message.sid) == ["sent", "delivered"]


async def test_connection_override_retries_5xx_with_the_same_token(
    twilio: Twilio, receiver: Receiver
) -> None:
    callback = receiver.url("/fails-once?ref=7") + "#rc=2&rp=5xx&rt=1000"
    message = await twilio.create("+14155550100", status_callback=callback)
    await twilio.simulator.drain()

    calls = receiver.received(message.sid)
    assert [call.params["MessageStatus"] for call in calls] == ["sent"] * 2 + ["delivered"] * 2
    assert calls[0].token == calls[1].token != calls[2].token == calls[3].token
    assert {(r.attempts, r.outcome) for r in twilio.simulator.callbacks} == {(2, "delivered")}


async def test_without_override_a_5xx_is_not_retried(twilio: Twilio, receiver: Receiver) -> None:
    message = await twilio.create("+14155550100", status_callback=receiver.url("/fails"))
    await twilio.simulator.drain()

    assert receiver.statuses(message.sid) == ["sent", "delivered"]
    assert {(r.attempts, r.outcome) for r in twilio.simulator.callbacks} == {(1, "failed")}


async def test_connection_failure_is_retried_once(twilio: Twilio) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    await twilio.create("+14155550100", status_callback=f"http://127.0.0.1:{port}/status")
    await twilio.simulator.drain()

    assert {(r.attempts, r.outcome) for r in twilio.simulator.callbacks} == {(2, "failed")}


async def test_gets_are_answered_429_and_503_at_seeded_rates(start_twilio: StartTwilio) -> None:
    twilio = await start_twilio(get_429_probability=0.3, get_5xx_probability=0.2)
    message = await twilio.create("+14155550100")
    answers: list[tuple[int, int | None]] = []
    async with httpx.AsyncClient(base_url=twilio.base_url, auth=(ACCOUNT_SID, AUTH_TOKEN)) as http:
        for path in [message.uri, message.uri.rsplit("/", 1)[0] + ".json"] * 100:
            response = await http.get(path)
            answers.append((response.status_code, response.json().get("code")))
    counts = {answer: answers.count(answer) for answer in set(answers)}
    assert set(counts) == {(200, None), (429, 20429), (503, 20503)}
    assert 40 <= counts[(429, 20429)] <= 80 and 20 <= counts[(503, 20503)] <= 60
    # A create is never answered so: only GETs are.
    assert (await twilio.create("+14155550101")).status == "queued"
    with pytest.raises(ValueError):
        SimulatorConfig(get_429_probability=0.7, get_5xx_probability=0.7)


@pytest.mark.parametrize(
    ("to", "from_"),
    [("whatsapp:+14155550100", SENDER), ("+14155550100", "whatsapp:" + SENDER),
     ("rcs:+14155550100", SENDER)],
)  # fmt: skip
async def test_a_from_of_another_channel_than_to_is_refused_like_twilio(
    twilio: Twilio, to: str, from_: str
) -> None:
    with pytest.raises(TwilioRestException) as refused:
        await twilio.create(to, from_=from_)
    assert (refused.value.status, refused.value.code) == (400, 21910)
    assert twilio.simulator.messages == {}


async def test_rcs_through_a_messaging_service_is_sent_from_an_rcs_sender(
    twilio: Twilio, receiver: Receiver
) -> None:
    message = await twilio.client.messages.create_async(
        to="rcs:+14155550100", messaging_service_sid=SERVICE_SID, body="hi",
        status_callback=receiver.url(),
    )  # fmt: skip
    await twilio.simulator.drain()
    assert receiver.statuses(message.sid) == ["queued", "sent", "delivered", "read"]
    assert {call.params["ChannelPrefix"] for call in receiver.received(message.sid)} == {"rcs"}
    assert (await twilio.fetch(message.sid)).from_.startswith("rcs:")


async def test_callbacks_waiting_for_a_free_sender_are_not_timed_out(
    start_twilio: StartTwilio, receiver: Receiver
) -> None:
    """Five times more callbacks than the simulator posts at once, to a receiver that takes 0.5 s
    each: the time one waits for its turn inside the simulator is not the receiver's, so none of
    them runs out of its 2 s (before, the last waves did: the cause of a flaky burst test)."""
    twilio = await start_twilio(callback_timeout_seconds=2, time_scale=0)
    for index in range(5 * CALLBACK_CONCURRENCY):
        twilio.simulator.create(
            {"To": [f"+1415{index:03d}0005"], "From": [SENDER], "Body": ["hi"],
             "StatusCallback": [receiver.url("/slow")]}
        )  # fmt: skip
    await twilio.simulator.drain()

    outcomes = Counter(record.outcome for record in twilio.simulator.callbacks)
    assert outcomes == {"delivered": 5 * CALLBACK_CONCURRENCY}
