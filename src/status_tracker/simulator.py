"""A simulator of Twilio's Programmable Messaging REST API, status callbacks included.

It answers the calls the service makes (create, fetch, cancel, list) with Twilio's JSON shapes
and error bodies, moves each message through a realistic lifecycle on a background task, and
posts signed status callbacks that can arrive late, twice, out of order or never, so that the
service's ingestion and reconciliation can be exercised without Twilio.

Outcomes are chosen by the last four digits of `To` (digits only; a `whatsapp:` or `rcs:` prefix
is ignored). `0007` creates the message at once, so it is sent although the client timed out;
on WhatsApp and RCS, `0007` and `0008` also end with `read`. WhatsApp and RCS callbacks carry
`ChannelPrefix`, `ChannelInstallSid`, `ChannelToAddress`, and `EventType=DELIVERED`/`READ` on
receipts; a WhatsApp `sent` carries `StructuredMessage=false`:

| `To` ends in      | create answers                               | callbacks, in order         |
|-------------------|----------------------------------------------|-----------------------------|
| `0001`            | 201                                          | `sent`, `undelivered` 30003 |
| `0002`            | 201                                          | `sent`, `undelivered` 30007 |
| `0003`            | 400, code 21610 (unsubscribed), no message   | none                        |
| `0004`            | 400, code 21211 (invalid To), no message     | none                        |
| `0005`            | 201                                          | `sent`, then nothing, ever  |
| `0006`            | 500, code 20500, no message                  | none                        |
| `0007`            | 201, but only after `create_timeout_seconds` | `sent`, `delivered`         |
| `0008`            | 429, code 20429, twice per `To`; then 201    | `sent`, `delivered`         |
| `0009`            | 201, only once the `sent` callback is in     | `sent`, `delivered`         |
| `0010`            | 201                                          | `failed` 30001              |
| `0011`            | 201                                          | `sent`, `delivered`,        |
|                   |                                              | `undelivered` 30003         |
| other `whatsapp:` | 201                                          | `sent`, `delivered`, `read` |
| other `rcs:`      | 201                                          | `sent`, `delivered`, `read` |
| anything else     | 201                                          | `sent`, `delivered`         |

Through a Messaging Service (`MessagingServiceSid`) the create answers `accepted` and a `queued`
callback comes first. A scheduled message (`ScheduleType=fixed`, `SendAt`, a Messaging Service)
answers `scheduled` and starts its lifecycle at `SendAt`, unless canceled first (`canceled`
callback). The create's initial status is never sent as a callback, as with Twilio.

Create refuses, as Twilio does: no `To` 21604; `To` not E.164 21211; neither `From` nor
`MessagingServiceSid` 21603; malformed `MessagingServiceSid` 21701; no `Body`, `MediaUrl` or
`ContentSid` 21619; `Body` over 1600 characters 21617; bad `StatusCallback` URL 21609; a `From`
of another channel than `To` (an SMS number to `whatsapp:+…`) 21910;
`ScheduleType` other than `fixed` 35126; `ScheduleType=fixed` without `SendAt` 35111, or without
a Messaging Service 35118; `SendAt` not 300 s to 35 days ahead 35114. `SendAt` without
`ScheduleType` is ignored: the message goes at once. Canceling a message that is not
`scheduled` answers 400, code 30409. Bad credentials answer 401, code 20003; unknown resources
404, code 20404.

Timing and faults come from `SimulatorConfig`, all randomness from one `random.Random(seed)`,
drawn when a request is handled. Each status change comes `callback_delay_min..max` seconds
after the previous one, times `time_scale`; a scheduled message waits for `SendAt`, also times
`time_scale`. Each callback is lost with `loss_probability` (the stored status still changes:
that is what reconciliation recovers) or else sent twice with `duplicate_probability`; with
`reorder_probability` all of a message's callbacks are held until its lifecycle ends and then
sent in a shuffled order that is never the original one. `date_sent` is set when a message is
sent or fails. The `DateSent` list filters compare at day granularity given a date
(`DateSent<` means on or before that day), to the second given a date-time, and leave out
messages not sent yet.

Callbacks are signed like Twilio's (`X-Twilio-Signature` over the StatusCallback URL without its
`#fragment`) and carry `I-Twilio-Idempotency-Token`, the same on retries of one callback and
different between duplicates. Twilio's connection overrides in the URL fragment are honoured
(`#rc=3&rp=all&ct=2000&rt=5000&tt=15000`: retries 0-5, policy `4xx,5xx,ct,rt,all`, timeouts in
ms); without them a callback is retried once, only when the connection fails. At most
`CALLBACK_CONCURRENCY` callbacks are posted at once; a callback's total time (`tt`) starts when it
is posted, not while it waits for its turn. Every callback's fate is recorded in
`Simulator.callbacks`. With `SimulatorConfig.state_file` the messages outlive a restart.
"""

import asyncio
import base64
import binascii
import contextlib
import email.utils
import itertools
import json
import logging
import os
import random
import re
import secrets
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urldefrag, urlencode, urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from status_tracker.simulator_event_streams import EventStreamSender

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC3f2b9d4e8a1c6075b2e9d8c4a1f36e57"
DEFAULT_AUTH_TOKEN = "9b1e4c7a2d8f3e6b0a5c9d2e7f4b1a83"
# The sender a Messaging Service picks from its pool (Twilio's documentation number).
SERVICE_SENDER = "+15017122661"

_log = logging.getLogger(__name__)

_E164 = re.compile(r"(whatsapp:|rcs:)?\+[1-9][0-9]{6,14}")
_SERVICE_SID = re.compile(r"MG[0-9a-f]{32}")
_ACCOUNT_SID = re.compile(r"AC[0-9a-f]{32}")
_SCHEDULE_MIN = timedelta(seconds=300)
_SCHEDULE_MAX = timedelta(days=35)
_ERROR_MESSAGES = {
    30001: "Queue overflow",
    30003: "Unreachable destination handset",
    30007: "Message filtered",
}
_DATE_SENT_ON = {"sent", "failed"}
_DATETIME_FIELDS = ("date_created", "date_updated", "send_at", "date_sent")
# Status callbacks in flight at once, as a sender's webhook workers would allow.
CALLBACK_CONCURRENCY = 50


@dataclass
class SimulatorConfig:
    account_sid: str = DEFAULT_ACCOUNT_SID
    auth_token: str = DEFAULT_AUTH_TOKEN
    seed: int | None = None
    callback_delay_min: float = 0.05
    callback_delay_max: float = 0.5
    duplicate_probability: float = 0.0
    reorder_probability: float = 0.0
    loss_probability: float = 0.0
    create_timeout_seconds: float = 30.0
    callback_timeout_seconds: float = 15.0
    time_scale: float = 1.0
    # Share of GETs (fetches and list pages) answered 429 (code 20429) or 503 (code 20503).
    get_429_probability: float = 0.0
    get_5xx_probability: float = 0.0
    # Where the messages are kept across restarts (JSON); None: forgotten on exit.
    state_file: Path | None = None
    # An Event Streams webhook sink to post the account's message events to (beside or, with
    # status_callbacks off, instead of status callbacks); see simulator_event_streams.
    event_streams_url: str | None = None
    event_streams_max_batch: int = 100
    status_callbacks: bool = True

    def __post_init__(self) -> None:
        if not _ACCOUNT_SID.fullmatch(self.account_sid):
            raise ValueError(f"account_sid must be AC and 32 lowercase hex: {self.account_sid!r}")
        if not 0 <= self.callback_delay_min <= self.callback_delay_max:
            raise ValueError("need 0 <= callback_delay_min <= callback_delay_max")
        for name in ("duplicate_probability", "reorder_probability", "loss_probability",
                     "get_429_probability", "get_5xx_probability"):  # fmt: skip
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.get_429_probability + self.get_5xx_probability > 1.0:
            raise ValueError("get_429_probability + get_5xx_probability must not exceed 1")
        if self.time_scale < 0 or self.create_timeout_seconds < 0:
            raise ValueError("time_scale and create_timeout_seconds must not be negative")
        if self.callback_timeout_seconds <= 0:
            raise ValueError("callback_timeout_seconds must be positive")


@dataclass
class SimulatedMessage:
    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    media_urls: list[str]
    status_callback: str | None
    status: str
    num_segments: int
    date_created: datetime
    date_updated: datetime
    send_at: datetime | None = None
    date_sent: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    price: str | None = None
    # Every status the message has had, in order, starting with the initial one.
    history: list[str] = field(default_factory=list)
    sequence: int = 0
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    def to_json(self) -> dict[str, Any]:
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": _rfc2822(self.date_created),
            "date_sent": _rfc2822(self.date_sent),
            "date_updated": _rfc2822(self.date_updated),
            "direction": "outbound-api",
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(len(self.media_urls)),
            "num_segments": str(self.num_segments),
            "price": self.price,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {
                "media": self.uri.removesuffix(".json") + "/Media.json",
                "feedback": self.uri.removesuffix(".json") + "/Feedback.json",
            },
            "to": self.to,
            "uri": self.uri,
        }


@dataclass(frozen=True)
class CallbackRecord:
    """What became of one status callback: `dropped` (simulated loss), `delivered`, `failed`."""

    message_sid: str
    status: str
    url: str
    token: str | None
    attempts: int
    outcome: Literal["delivered", "failed", "dropped"]


class TwilioError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


@dataclass(frozen=True)
class _Step:
    status: str
    error_code: int | None = None


@dataclass
class _Transition:
    step: _Step
    delay: float
    tokens: list[str]  # one per copy sent: empty when lost, two when duplicated


@dataclass
class _Plan:
    transitions: list[_Transition]
    order: list[int] | None  # the shuffled delivery order, when reordered


@dataclass(frozen=True)
class _Pending:
    message_sid: str
    status: str
    callback: str
    params: dict[str, str]
    token: str


@dataclass(frozen=True)
class _Overrides:
    retries: int
    policy: frozenset[str]
    timeout: httpx.Timeout
    total: float

    def retries_on(self, failure: str) -> bool:
        return "all" in self.policy or failure in self.policy


class Simulator:
    def __init__(
        self, config: SimulatorConfig, *, callback_transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.messages: dict[str, SimulatedMessage] = {}
        self.callbacks: list[CallbackRecord] = []
        self._rng = random.Random(config.seed)
        self._validator = RequestValidator(config.auth_token)
        self._transport = callback_transport
        # Callbacks wait for a sender here, not in httpx's pool, whose queue costs CPU in the
        # square of its length. Each sender is a client of one connection: one client of 50
        # scanned its connections so often (httpcore 1.0) that 250 callbacks to a receiver
        # taking 0.5 s each cost 7 s of CPU, and waves ran out of their time.
        self._posting = asyncio.Semaphore(CALLBACK_CONCURRENCY)
        self._idle_senders: list[httpx.AsyncClient] = []
        self._senders: list[httpx.AsyncClient] = []
        # One for all senders: loading the CA certificates takes 50 ms.
        self._tls: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sequence = itertools.count()
        self._throttled: Counter[str] = Counter()
        self._channel_install_sid = "XE" + self._hex()
        self.event_streams: EventStreamSender | None = None
        if config.event_streams_url is not None:
            self.event_streams = EventStreamSender(
                config.event_streams_url,
                auth_token=config.auth_token,
                seed=config.seed,
                duplicate_probability=config.duplicate_probability,
                reorder_probability=config.reorder_probability,
                spawn=self._spawn,
                transport=callback_transport,
                max_batch=config.event_streams_max_batch,
            )
        # Whether the messages changed since they were last saved.
        self.changed = False
        if config.state_file is not None and config.state_file.exists():
            self._load(config.state_file)

    def _load(self, path: Path) -> None:
        for saved in json.loads(path.read_text()):
            for name in _DATETIME_FIELDS:
                if saved[name] is not None:
                    saved[name] = datetime.fromisoformat(saved[name])
            message = SimulatedMessage(**saved)
            self.messages[message.sid] = message
        start = max((m.sequence for m in self.messages.values()), default=-1) + 1
        self._sequence = itertools.count(start)
        _log.info("simulator state loaded messages=%d", len(self.messages))

    def save(self) -> None:
        """Write the messages to the state file, if there is one and anything changed.

        A message whose lifecycle a restart cuts short stays where it was, as a message whose
        receipt never comes does at Twilio."""
        path = self.config.state_file
        if path is None or not self.changed:
            return
        self.changed = False
        saved = []
        for message in self.messages.values():
            state = {f.name: getattr(message, f.name) for f in fields(message)}
            del state["cancel_event"]
            for name in _DATETIME_FIELDS:
                if state[name] is not None:
                    state[name] = state[name].isoformat()
            saved.append(state)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(saved))
        os.replace(temporary, path)

    async def drain(self) -> None:
        """Wait until every lifecycle and callback under way has finished.

        A scheduled message counts until it is sent or canceled.
        """
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.event_streams is not None:
            await self.event_streams.close()
        await asyncio.gather(*(sender.aclose() for sender in self._senders))
        self._senders.clear()
        self._idle_senders.clear()

    async def first_callback_done(self, sid: str) -> None:
        """Wait until a status callback for `sid` has been answered (or given up on)."""
        deadline = asyncio.get_running_loop().time() + self.config.create_timeout_seconds
        while not any(record.message_sid == sid for record in self.callbacks):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.01)

    def authorized(self, account_sid: str, auth_token: str) -> bool:
        # `&`, not `and`: both comparisons always run, so timing tells nothing.
        return secrets.compare_digest(
            account_sid.encode(), self.config.account_sid.encode()
        ) & secrets.compare_digest(auth_token.encode(), self.config.auth_token.encode())

    def create(self, form: Mapping[str, list[str]]) -> tuple[SimulatedMessage, str]:
        """Create a message from a Messages.json form; also the outcome its `To` number picks."""
        to = _field(form, "To")
        if to is None:
            raise TwilioError(400, 21604, "A 'To' phone number is required.")
        if not _E164.fullmatch(to):
            raise TwilioError(400, 21211, f"Invalid 'To' Phone Number: {to}")
        from_ = _field(form, "From")
        service = _field(form, "MessagingServiceSid")
        if from_ is None and service is None:
            raise TwilioError(400, 21603, "A 'From' phone number is required.")
        if service is not None and not _SERVICE_SID.fullmatch(service):
            raise TwilioError(400, 21701, f"The Messaging Service Sid {service} is invalid.")
        if from_ is not None and _channel(from_) != _channel(to):
            raise TwilioError(
                400,
                21910,
                "Invalid From and To pair. From and To should be of the same channel",
            )
        body = _field(form, "Body") or ""
        media = [url for url in form.get("MediaUrl", []) if url]
        if not body and not media and _field(form, "ContentSid") is None:
            raise TwilioError(400, 21619, "A Message Body, Media URL or Content SID is required.")
        if len(body) > 1600:
            raise TwilioError(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        callback = _field(form, "StatusCallback")
        if callback is not None and not _valid_callback(callback):
            raise TwilioError(400, 21609, f"Invalid StatusCallback url: {callback}")
        send_at = self._schedule(form, service)

        outcome = _suffix(to)
        if outcome == "0003":
            raise TwilioError(400, 21610, "Attempt to send to unsubscribed recipient")
        if outcome == "0004":
            raise TwilioError(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if outcome == "0006":
            raise TwilioError(500, 20500, "An internal server error has occurred")
        if outcome == "0008":
            self._throttled[to] += 1
            if self._throttled[to] <= 2:
                raise TwilioError(429, 20429, "Too Many Requests")

        now = _now()
        status = "scheduled" if send_at else "queued" if service is None else "accepted"
        message = SimulatedMessage(
            sid=("MM" if media else "SM") + self._hex(),
            account_sid=self.config.account_sid,
            to=to,
            from_=from_,
            messaging_service_sid=service,
            body=body,
            media_urls=media,
            status_callback=callback,
            status=status,
            # A Messaging Service picks the sender, and so the encoding, only once it queues.
            num_segments=0 if service is not None else _segments(to, body, media),
            date_created=now,
            date_updated=now,
            send_at=send_at,
            history=[status],
            sequence=next(self._sequence),
        )
        self.messages[message.sid] = message
        self.changed = True
        _log.info("message created sid=%s to=%s status=%s", message.sid, _redact(to), status)
        if self.event_streams is not None:
            self.event_streams.publish(message, None)
        self._spawn(self._run(message, self._plan(message)))
        return message, outcome

    def fetch(self, sid: str) -> SimulatedMessage:
        message = self.messages.get(sid)
        if message is None:
            uri = f"/{API_VERSION}/Accounts/{self.config.account_sid}/Messages/{sid}.json"
            raise TwilioError(404, 20404, f"The requested resource {uri} was not found")
        return message

    def get_fault(self) -> None:
        """Raise the 429 or 503 that a GET draws, at the configured rates."""
        draw = self._rng.random()
        if draw < self.config.get_429_probability:
            raise TwilioError(429, 20429, "Too Many Requests")
        if draw < self.config.get_429_probability + self.config.get_5xx_probability:
            raise TwilioError(503, 20503, "Service Unavailable")

    def cancel(self, sid: str) -> SimulatedMessage:
        message = self.fetch(sid)
        if message.status != "scheduled":
            raise TwilioError(400, 30409, "This message cannot be canceled")
        step = _Step("canceled")
        params = self._apply(message, step)
        message.cancel_event.set()
        tokens = self._draw_tokens() if message.status_callback else []
        pending = self._pending(message, _Transition(step, 0.0, tokens), params)
        if pending:
            self._spawn(self._deliver_all(pending))
        return message

    def page(self, query: Mapping[str, str]) -> dict[str, Any]:
        """One page of the Messages list, newest first, in Twilio's envelope."""
        filters = {
            name: query[name]
            for name in ("To", "From", "DateSent", "DateSent<", "DateSent>")
            if query.get(name)
        }
        try:
            page_size = min(max(int(query.get("PageSize", "50")), 1), 1000)
            page = max(int(query.get("Page", "0")), 0)
            matches = _date_filter(filters)
        except ValueError as error:
            raise TwilioError(400, 20001, f"Invalid list parameter: {error}") from error
        ordered = [
            message
            for message in sorted(self.messages.values(), key=lambda m: -m.sequence)
            if filters.get("To", message.to) == message.to
            and filters.get("From", message.from_) == message.from_
            and matches(message.date_sent)
        ]
        positions = {message.sid: index for index, message in enumerate(ordered)}
        # Keyset tokens, like Twilio's PageToken: a page stays put while new messages arrive.
        token = query.get("PageToken", "")
        if token[:2] == "PA" and token[2:] in positions:
            start = positions[token[2:]] + 1
        elif token[:2] == "PB" and token[2:] in positions:
            start = max(positions[token[2:]] - page_size, 0)
        else:
            start = page * page_size
        items = ordered[start : start + page_size]

        base = f"/{API_VERSION}/Accounts/{self.config.account_sid}/Messages.json"

        def uri(number: int, page_token: str | None) -> str:
            params = [*filters.items(), ("PageSize", str(page_size)), ("Page", str(number))]
            if page_token is not None:
                params.append(("PageToken", page_token))
            return f"{base}?{urlencode(params)}"

        more = start + len(items) < len(ordered)
        return {
            "messages": [message.to_json() for message in items],
            "first_page_uri": uri(0, None),
            "next_page_uri": uri(page + 1, "PA" + items[-1].sid) if items and more else None,
            "previous_page_uri": uri(page - 1, "PB" + items[0].sid) if items and page else None,
            "page": page,
            "page_size": page_size,
            "start": page * page_size,
            "end": page * page_size + max(len(items) - 1, 0),
            "uri": uri(page, token or None),
        }

    def _schedule(self, form: Mapping[str, list[str]], service: str | None) -> datetime | None:
        schedule_type = _field(form, "ScheduleType")
        if schedule_type is None:
            return None
        if schedule_type != "fixed":
            raise TwilioError(
                400, 35126, "The ScheduleType value provided is not supported for this channel"
            )
        send_at = _field(form, "SendAt")
        if send_at is None:
            raise TwilioError(400, 35111, "SendAt timestamp is missing")
        if service is None:
            raise TwilioError(400, 35118, "MessagingServiceSid is required to schedule a message")
        when = _parse_datetime(send_at)
        if when is None or not _SCHEDULE_MIN <= when - _now() <= _SCHEDULE_MAX:
            raise TwilioError(
                400,
                35114,
                "SendAt time must be between 300 seconds and 35 days (3024000 seconds) in the "
                "future, inclusive",
            )
        return when

    def _plan(self, message: SimulatedMessage) -> _Plan:
        config = self.config
        steps = _lifecycle(message.to, message.messaging_service_sid is not None)
        transitions: list[_Transition] = []
        for index, step in enumerate(steps):
            # A scheduled message queues the moment SendAt comes.
            delay = 0.0 if index == 0 and message.send_at else self._delay()
            tokens = self._draw_tokens() if message.status_callback else []
            transitions.append(_Transition(step, delay, tokens))
        statuses = [t.step.status for t in transitions for _ in t.tokens]
        if len(set(statuses)) < 2 or self._rng.random() >= config.reorder_probability:
            return _Plan(transitions, None)
        order = list(range(len(statuses)))
        self._rng.shuffle(order)
        if [statuses[i] for i in order] == statuses:
            order.reverse()
        return _Plan(transitions, order)

    async def _run(self, message: SimulatedMessage, plan: _Plan) -> None:
        scale = self.config.time_scale
        if message.send_at is not None:
            wait = max((message.send_at - _now()).total_seconds(), 0.0) * scale
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(message.cancel_event.wait(), wait)
            # No await between here and the first status change, so a cancel can't slip in.
            if message.status != "scheduled":
                return
        # Statuses move on whatever the receiver does, as at Twilio; callbacks go one at a time,
        # in order unless reordered.
        chain: asyncio.Task[None] | None = None
        held: list[_Pending] = []
        for transition in plan.transitions:
            if transition.delay * scale > 0:
                await asyncio.sleep(transition.delay * scale)
            params = self._apply(message, transition.step)
            if self.event_streams is not None:
                self.event_streams.publish(message, transition.step.error_code)
            pending = self._pending(message, transition, params)
            if plan.order is not None:
                held.extend(pending)
            elif pending:
                chain = self._spawn(self._deliver_all(pending, after=chain))
        if held and plan.order is not None:
            self._spawn(self._deliver_all([held[index] for index in plan.order]))

    def _apply(self, message: SimulatedMessage, step: _Step) -> dict[str, str]:
        """Make a status change and return the status callback Twilio sends for it."""
        now = _now()
        message.status = step.status
        message.date_updated = now
        message.history.append(step.status)
        self.changed = True
        if step.status == "queued" and message.messaging_service_sid is not None:
            if message.from_ is None:
                channel = _channel(message.to)
                prefix = "" if channel == "sms" else channel + ":"
                message.from_ = prefix + SERVICE_SENDER
            message.num_segments = _segments(message.to, message.body, message.media_urls)
        if step.status in _DATE_SENT_ON and message.date_sent is None:
            message.date_sent = now
        if step.status == "sent":
            message.price = f"-{0.0079 * message.num_segments:.5f}"
        if step.error_code is not None:
            message.error_code = step.error_code
            message.error_message = _ERROR_MESSAGES.get(step.error_code)

        params = {
            "AccountSid": message.account_sid,
            "ApiVersion": API_VERSION,
            "From": message.from_ or "",
            "MessageSid": message.sid,
            "MessageStatus": step.status,
            "SmsSid": message.sid,
            "SmsStatus": step.status,
            "To": message.to,
        }
        if message.messaging_service_sid is not None:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if step.error_code is not None:
            params["ErrorCode"] = str(step.error_code)
        channel = _channel(message.to)
        if channel != "sms":
            params["ChannelPrefix"] = channel
            params["ChannelInstallSid"] = self._channel_install_sid
            params["ChannelToAddress"] = message.to.removeprefix(channel + ":")
            if message.error_message is not None and step.error_code is not None:
                params["ChannelStatusMessage"] = message.error_message
            # Receipts name their event; a WhatsApp `sent` says whether it was a structured one.
            if step.status in ("delivered", "read"):
                params["EventType"] = step.status.upper()
            if step.status == "sent" and channel == "whatsapp":
                params["StructuredMessage"] = "false"
        elif step.status in ("delivered", "undelivered"):
            params["RawDlrDoneDate"] = now.strftime("%y%m%d%H%M")
        _log.info("message status sid=%s status=%s", message.sid, step.status)
        return params

    def _pending(
        self, message: SimulatedMessage, transition: _Transition, params: dict[str, str]
    ) -> list[_Pending]:
        if message.status_callback is None or not self.config.status_callbacks:
            return []
        status = transition.step.status
        if not transition.tokens:
            url = urldefrag(message.status_callback).url
            self.callbacks.append(CallbackRecord(message.sid, status, url, None, 0, "dropped"))
        return [
            _Pending(message.sid, status, message.status_callback, params, token)
            for token in transition.tokens
        ]

    async def _deliver_all(
        self, pending: list[_Pending], after: asyncio.Task[None] | None = None
    ) -> None:
        if after is not None:
            await asyncio.wait({after})
        for callback in pending:
            await self._deliver(callback)

    async def _deliver(self, callback: _Pending) -> None:
        url, fragment = urldefrag(callback.callback)
        overrides = _overrides(fragment, self.config.callback_timeout_seconds)
        headers = {
            "X-Twilio-Signature": self._validator.compute_signature(url, callback.params),
            "I-Twilio-Idempotency-Token": callback.token,
            "User-Agent": "TwilioProxy/1.1",
        }
        attempts = 0
        outcome: Literal["delivered", "failed"] = "failed"
        # The total time (`tt`) is the receiver's: it starts once a sender is free. Counted from
        # the wait for one, a burst used to fail callbacks the receiver never even saw.
        async with self._posting:
            sender = self._idle_senders.pop() if self._idle_senders else self._new_sender()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(overrides.total):
                        while True:
                            attempts += 1
                            failure = await self._attempt(
                                sender, url, callback.params, headers, overrides
                            )
                            if failure is None:
                                outcome = "delivered"
                                break
                            if attempts > overrides.retries or not overrides.retries_on(failure):
                                break
            finally:
                self._idle_senders.append(sender)
        record = CallbackRecord(
            callback.message_sid, callback.status, url, callback.token, attempts, outcome
        )
        self.callbacks.append(record)
        if outcome == "failed":
            _log.warning(
                "status callback failed sid=%s status=%s attempts=%d",
                callback.message_sid,
                callback.status,
                attempts,
            )

    def _new_sender(self) -> httpx.AsyncClient:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        sender = httpx.AsyncClient(
            transport=self._transport, limits=httpx.Limits(max_connections=1), verify=self._tls
        )
        self._senders.append(sender)
        return sender

    async def _attempt(
        self,
        sender: httpx.AsyncClient,
        url: str,
        params: dict[str, str],
        headers: dict[str, str],
        overrides: _Overrides,
    ) -> str | None:
        """Post a callback once; None on success, else the kind of failure (an `rp` value)."""
        try:
            response = await sender.post(
                url, data=params, headers=headers, timeout=overrides.timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return "ct"
        except httpx.TransportError:
            return "rt"
        if response.status_code >= 500:
            return "5xx"
        if response.status_code >= 400:
            return "4xx"
        return None

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error("simulator task failed", exc_info=error)

    def _draw_tokens(self) -> list[str]:
        if self._rng.random() < self.config.loss_probability:
            return []
        copies = 2 if self._rng.random() < self.config.duplicate_probability else 1
        return [self._hex() for _ in range(copies)]

    def _delay(self) -> float:
        return self._rng.uniform(self.config.callback_delay_min, self.config.callback_delay_max)

    def _hex(self) -> str:
        return f"{self._rng.getrandbits(128):032x}"


def create_simulator_app(
    config: SimulatorConfig | None = None,
    *,
    callback_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The simulator as an ASGI app; its `Simulator` is `app.state.simulator`.

    `callback_transport` lets callbacks reach an in-process app (`httpx.ASGITransport`).
    """
    simulator = Simulator(config or SimulatorConfig(), callback_transport=callback_transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def keep() -> None:
            # Every second at most, so that even a killed simulator forgets little.
            while True:
                await asyncio.sleep(1)
                simulator.save()

        keeping = asyncio.create_task(keep())
        try:
            yield
        finally:
            keeping.cancel()
            await simulator.close()
            simulator.save()

    async def messages(request: Request) -> Response:
        if (refusal := _refusal(request, simulator)) is not None:
            return refusal
        if request.method == "GET":
            try:
                simulator.get_fault()
                return JSONResponse(simulator.page(request.query_params))
            except TwilioError as error:
                return _error(error)
        form = _parse_form(await request.body())
        try:
            message, outcome = simulator.create(form)
        except TwilioError as error:
            return _error(error)
        answer = message.to_json()
        if outcome == "0007":
            await _hold(request, simulator.config.create_timeout_seconds)
        if outcome == "0009":
            # The race every sender meets: a callback that outruns the create's response.
            await simulator.first_callback_done(message.sid)
        return JSONResponse(answer, status_code=201)

    async def message(request: Request) -> Response:
        if (refusal := _refusal(request, simulator)) is not None:
            return refusal
        sid = request.path_params["sid"]
        try:
            if request.method == "GET":
                simulator.get_fault()
                return JSONResponse(simulator.fetch(sid).to_json())
            form = _parse_form(await request.body())
            status = _field(form, "Status")
            if status is not None and status != "canceled":
                raise TwilioError(400, 20001, f"Status can only be 'canceled', not {status!r}")
            found = simulator.cancel(sid) if status else simulator.fetch(sid)
            if form.get("Body") == [""]:  # Twilio's redaction
                found.body = ""
                found.date_updated = _now()
                simulator.changed = True
            return JSONResponse(found.to_json())
        except TwilioError as error:
            return _error(error)

    async def not_found(request: Request, exc: Exception) -> Response:
        message = f"The requested resource {request.url.path} was not found"
        return _error(TwilioError(404, 20404, message))

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(TwilioError(405, 20004, "Method not allowed"))

    prefix = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages"
    app = Starlette(
        routes=[
            Route(prefix + ".json", messages, methods=["GET", "POST"]),
            Route(prefix + "/{sid}.json", message, methods=["GET", "POST"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
        lifespan=lifespan,
    )
    app.state.simulator = simulator
    return app


async def serve_simulator(host: str, port: int, config: SimulatorConfig) -> None:
    app = create_simulator_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, ws="none", lifespan="on", access_log=False, log_config=None
        )
    )
    await server.serve()


def run_simulator(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve the simulator until interrupted."""
    asyncio.run(serve_simulator(host, port, config))


def _refusal(request: Request, simulator: Simulator) -> Response | None:
    credentials = _basic_credentials(request.headers.get("authorization", ""))
    if credentials is None or not simulator.authorized(*credentials):
        response = _error(TwilioError(401, 20003, "Authenticate"))
        response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        return response
    if request.path_params["account_sid"] != simulator.config.account_sid:
        message = f"The requested resource {request.url.path} was not found"
        return _error(TwilioError(404, 20404, message))
    return None


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def _error(error: TwilioError) -> JSONResponse:
    return JSONResponse(error.to_json(), status_code=error.status)


async def _hold(request: Request, seconds: float) -> None:
    """Hang the answer, but give up as soon as the client does, so shutdown isn't held up."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(disconnected(), seconds)


def _parse_form(body: bytes) -> dict[str, list[str]]:
    # Parsed by hand: MediaUrl repeats, and Starlette's form parser needs python-multipart.
    form: dict[str, list[str]] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(name, []).append(value)
    return form


def _field(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[-1] if values and values[-1] != "" else None


def _lifecycle(to: str, via_service: bool) -> list[_Step]:
    outcome = _suffix(to)
    steps = [_Step("queued")] if via_service else []
    if outcome == "0010":
        return [*steps, _Step("failed", 30001)]
    steps.append(_Step("sent"))
    if outcome == "0002":
        # Carrier filtering happens after Twilio sent it: Twilio reports it `undelivered`.
        return [*steps, _Step("undelivered", 30007)]
    if outcome == "0005":
        return steps
    if outcome == "0001":
        return [*steps, _Step("undelivered", 30003)]
    steps.append(_Step("delivered"))
    if outcome == "0011":
        # A multi-segment SMS with one segment failing: the carrier reports both, the last wins
        # at Twilio, where the precedence rule keeps `delivered`.
        return [*steps, _Step("undelivered", 30003)]
    if _channel(to) != "sms":
        steps.append(_Step("read"))
    return steps


def _overrides(fragment: str, default_timeout: float) -> _Overrides:
    values = dict(parse_qsl(fragment))

    def seconds(name: str, cap_ms: int) -> float:
        value = values.get(name, "")
        if not value.isdigit():
            return default_timeout
        return min(max(int(value), 100), cap_ms) / 1000

    retries = values.get("rc", "")
    policy = values.get("rp", "ct")
    return _Overrides(
        retries=min(int(retries), 5) if retries.isdigit() else 1,
        policy=frozenset(part.strip() for part in policy.split(",")),
        timeout=httpx.Timeout(seconds("rt", 15_000), connect=seconds("ct", 10_000)),
        total=seconds("tt", 15_000),
    )


def _date_filter(filters: Mapping[str, str]) -> Callable[[datetime | None], bool]:
    """A predicate on `date_sent` for the DateSent, DateSent< and DateSent> filters."""
    bounds: list[tuple[str, datetime, bool]] = []
    for name in ("DateSent", "DateSent<", "DateSent>"):
        if name in filters:
            value = filters[name]
            day = len(value) == 10
            instant = (
                datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
                if day
                else _parse_datetime(value)
            )
            if instant is None:
                raise ValueError(f"{name}={value}")
            bounds.append((name, instant, day))

    def matches(sent: datetime | None) -> bool:
        if not bounds:
            return True
        if sent is None:
            return False
        for name, instant, day in bounds:
            if name == "DateSent" and sent.date() != instant.date():
                return False
            if name == "DateSent<" and not (
                sent < instant + timedelta(days=1) if day else sent <= instant
            ):
                return False
            if name == "DateSent>" and sent < instant:
                return False
        return True

    return matches


def _parse_datetime(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _valid_callback(url: str) -> bool:
    parts = urlsplit(url)
    return (
        len(url) <= 4000
        and parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "_" not in (parts.hostname or "")
    )


def _segments(to: str, body: str, media: list[str]) -> int:
    if media or _channel(to) != "sms" or not body:
        return 1
    if body.isascii():  # close enough to GSM-7
        single, part, length = 160, 153, len(body)
    else:
        single, part, length = 70, 67, len(body.encode("utf-16-le")) // 2
    return 1 if length <= single else -(-length // part)


def _suffix(number: str) -> str:
    return re.sub(r"[^0-9]", "", number)[-4:]


def _channel(address: str) -> str:
    """`whatsapp`, `rcs`, or `sms` for a bare number (or an alphanumeric sender ID)."""
    prefix, colon, _ = address.partition(":")
    return prefix.lower() if colon else "sms"


def _redact(number: str) -> str:
    return "…" + _suffix(number)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _rfc2822(moment: datetime | None) -> str | None:
    return None if moment is None else email.utils.format_datetime(moment)
