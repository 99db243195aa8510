"""The simulator's Event Streams webhook sink sender: the account's message events, as Twilio
posts them to a sink.

Each status change that Event Streams reports (`queued`, `sent`, `failed`, `delivered`,
`undelivered`, `read`; never `accepted`, `scheduled` or `canceled`) becomes a CloudEvent
(`com.twilio.messaging.message.<status>`, schema Messaging.MessageStatus) with the event's own
`timestamp`. Events are batched (up to `max_batch`, or what `wait_seconds` gathers) and posted as
a JSON array, signed as Twilio signs JSON bodies: `bodySHA256=<hex SHA-256 of the body>` is added
to the URL, and `X-Twilio-Signature` covers that URL alone. As at-least-once delivery does, with
`duplicate_probability` an event is repeated within its batch and the whole batch is delivered a
second time; with `reorder_probability` a batch is shuffled; batches are posted concurrently, so
they can also arrive out of order. A batch answered other than 2xx (or not at all) is retried, as
Twilio does for hours, here `retries` times with a doubling pause.
"""

import asyncio
import hashlib
import json
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urldefrag

import httpx
from twilio.request_validator import RequestValidator

from status_tracker.event_streams import MESSAGE_EVENT_PREFIX, STREAMED_STATUSES

if TYPE_CHECKING:
    from status_tracker.simulator import SimulatedMessage

DATA_SCHEMA = "https://events-schemas.twilio.com/Messaging.MessageStatus/8"
RETRY_PAUSE_SECONDS = 0.05


@dataclass(frozen=True)
class StreamBatchRecord:
    """What became of one batch post: its event ids in the order sent, and its fate."""

    event_ids: list[str]
    attempts: int
    outcome: Literal["delivered", "failed"]
    redelivery: bool
    shuffled: bool


def signed_url(url: str, body: str) -> str:
    """`url` with the `bodySHA256` query parameter by which Twilio signs a JSON body."""
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f"{url}{'&' if '?' in url else '?'}bodySHA256={digest}"


class EventStreamSender:
    def __init__(
        self,
        url: str,
        *,
        auth_token: str,
        seed: int | None,
        duplicate_probability: float,
        reorder_probability: float,
        spawn: Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"],
        transport: httpx.AsyncBaseTransport | None = None,
        max_batch: int = 100,
        wait_seconds: float = 0.05,
        retries: int = 5,
        timeout_seconds: float = 5.0,
    ) -> None:
        self.url = url
        self.batches: list[StreamBatchRecord] = []
        self._validator = RequestValidator(auth_token)
        # Its own randomness: turning Event Streams on leaves the simulator's SIDs and timings
        # as they were for a seed, so that a run with callbacks and one with Event Streams match.
        self._rng = random.Random(seed)
        self._duplicate_probability = duplicate_probability
        self._reorder_probability = reorder_probability
        self._spawn = spawn
        self._transport = transport
        self._max_batch = max_batch
        self._wait_seconds = wait_seconds
        self._retries = retries
        self._timeout = timeout_seconds
        self._pending: list[dict[str, Any]] = []
        self._flush_due: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def publish(self, message: "SimulatedMessage", error_code: int | None) -> None:
        """Queue the event of `message`'s status change, if Event Streams reports that status."""
        status: str = message.status
        if status not in STREAMED_STATUSES:
            return
        self._pending.append(self._cloud_event(message, status, error_code))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._flush_due is None:
            self._flush_due = self._spawn(self._flush_later())

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._wait_seconds)
        self._flush_due = None
        self._flush()

    def _flush(self) -> None:
        events, self._pending = self._pending, []
        if not events:
            return
        batch = []
        for event in events:
            batch.append(event)
            if self._rng.random() < self._duplicate_probability:
                batch.append(event)
        shuffled = self._rng.random() < self._reorder_probability and len(batch) > 1
        if shuffled:
            in_order = list(batch)
            self._rng.shuffle(batch)
            if batch == in_order:
                batch.reverse()
        self._spawn(self._deliver(batch, redelivery=False, shuffled=shuffled))
        if self._rng.random() < self._duplicate_probability:
            self._spawn(self._deliver(batch, redelivery=True, shuffled=shuffled))

    async def _deliver(
        self, batch: list[dict[str, Any]], *, redelivery: bool, shuffled: bool
    ) -> None:
        body = json.dumps(batch)
        url = signed_url(self.url, body)
        headers = {
            "Content-Type": "application/json",
            "X-Twilio-Signature": self._validator.compute_signature(url, {}),
            "User-Agent": "Twilio-Event-Streams",
        }
        if self._http is None:
            self._http = httpx.AsyncClient(transport=self._transport, timeout=self._timeout)
        attempts = 0
        outcome: Literal["delivered", "failed"] = "failed"
        while attempts <= self._retries:
            if attempts:
                await asyncio.sleep(RETRY_PAUSE_SECONDS * 2 ** (attempts - 1))
            attempts += 1
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.TransportError:
                continue
            if response.is_success:
                outcome = "delivered"
                break
        ids = [event["id"] for event in batch]
        self.batches.append(StreamBatchRecord(ids, attempts, outcome, redelivery, shuffled))

    def _cloud_event(
        self, message: "SimulatedMessage", status: str, error_code: int | None
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        event_type = MESSAGE_EVENT_PREFIX + status
        data: dict[str, Any] = {
            "messageSid": message.sid,
            "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "accountSid": message.account_sid,
            "eventName": event_type,
            "apiVersion": "2010-04-01",
            "from": message.from_ or "",
            "to": message.to,
            "messageStatus": status.upper(),
            "body": message.body,
            "numberOfSegments": message.num_segments,
            "mcc": "310",
            "mnc": "260",
            "tags": {},
        }
        if message.messaging_service_sid is not None:
            data["messagingServiceSid"] = message.messaging_service_sid
        if error_code is not None:
            data["errorCode"] = error_code
        if message.status_callback is not None:
            data["statusCallBackUrl"] = urldefrag(message.status_callback).url
        if status in ("delivered", "undelivered") and ":" not in message.to:
            data["rawDlrDoneDate"] = now.strftime("%y%m%d%H%M")
        return {
            "specversion": "1.0",
            "type": event_type,
            "source": f"/2010-04-01/Accounts/{message.account_sid}/Messages/{message.sid}.json",
            "id": f"EZ{self._rng.getrandbits(128):032x}",
            "dataschema": DATA_SCHEMA,
            "datacontenttype": "application/json",
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": data,
        }
