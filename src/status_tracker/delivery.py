"""Outbound webhooks: signing (Standard Webhooks), safe destinations, and the delivery workers.

Every worker process runs one `Deliverer`: it claims due deliveries from the outbox (several
workers and replicas share them, see `outbox.claim_deliveries`), posts each to its endpoint and
records the attempt. Delivery is at least once: an attempt whose outcome was not recorded (the
process killed mid-request) is made again once its lease is over, with the same `webhook-id`.
"""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson

from status_tracker import metrics, outbox
from status_tracker.database import is_unavailable
from status_tracker.error_codes import describe
from status_tracker.settings import Settings

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "message.status_changed",
    "message.final",
    "message.inbound",
    "reconciliation.completed",
)
SECRET_PREFIX = "whsec_"
# How long the secret a rotation replaces keeps signing beside the new one.
ROTATION_OVERLAP_SECONDS = 24 * 3600

# Seconds to wait after each failed attempt, before jitter (±20 %): 15 attempts over about three
# days (75 h 42 min), then the delivery is given up.
RETRY_SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800) + (43200,) * 5
# An endpoint whose every attempt failed for this long is disabled.
DISABLE_AFTER_SECONDS = 5 * 24 * 3600
# What of an answer is kept with its attempt.
EXCERPT_BYTES = 256


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, the key being the secret's base64 part."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def render(event: Mapping[str, Any]) -> bytes:
    """The body of an event, as delivered and as streamed: the same bytes on every attempt."""
    data = dict(event["payload"])
    if "error_code" in data:
        data["error_description"] = describe(data["error_code"])
    created_at: datetime = event["created_at"]
    timestamp = created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return orjson.dumps({"type": event["type"], "timestamp": timestamp, "data": data})


def webhook_id(event_id: int) -> str:
    """One per event: the same on every retry and replay, and for every endpoint."""
    return f"msg_{event_id}"


def retry_delay(attempts: int, scale: float) -> float | None:
    """Seconds before the next attempt after `attempts` failed ones; None: give up."""
    if attempts > len(RETRY_SCHEDULE):
        return None
    return RETRY_SCHEDULE[attempts - 1] * scale * random.uniform(0.8, 1.2)


# --- Where webhooks may go ----------------------------------------------------------------------


class UnsafeDestination(ValueError):
    """An endpoint URL the service refuses to call."""


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global leaves out loopback, link-local, private, shared (CGNAT) and reserved ranges.
    return ip.is_global and not ip.is_multicast


async def check_destination(url: str, allow_private: bool) -> None:
    """Raise UnsafeDestination unless `url` is http(s) to a host whose every address is public
    (or `allow_private`): a webhook must not reach the service's own network."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeDestination("the URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise UnsafeDestination("the URL must not carry credentials")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, parts.port or 443, type=socket.SOCK_STREAM
        )
    except OSError as error:
        raise UnsafeDestination(f"the host {parts.hostname} does not resolve") from error
    refused = sorted({str(info[4][0]) for info in infos if not _public(str(info[4][0]))})
    if refused:
        raise UnsafeDestination(
            f"the host {parts.hostname} is on a loopback, link-local or private address "
            f"({', '.join(refused)}); set STATUS_TRACKER_WEBHOOKS_ALLOW_PRIVATE=true to allow it"
        )


# --- The workers --------------------------------------------------------------------------------


class Deliverer:
    """Derives the outbox's events from the reports stored, claims and delivers due webhooks,
    `concurrency` at a time, until closed; also prunes the outbox past its retention.

    Both give way to callbacks: they are off the callback's path, deriving an event costs the
    database about what storing its report does, and a delivery costs this process about what a
    callback costs (an HTTP request each way). While `busy()` says the process is busy with
    callbacks (they queue for the database), a worker derives `BUSY_DERIVE_REPORTS` reports'
    events and delivers one claim at a time, and pauses between, so that ingest keeps nearly all
    of its throughput; what is left behind is done once the load eases. Successful attempts, the
    bulk of them, are recorded in batches, failures at once."""

    POLL_SECONDS = 0.5
    PRUNE_EVERY_SECONDS = 600
    BACKLOG_EVERY_SECONDS = 15
    # Between two claims, and two derivations, of a busy process: `concurrency` deliveries and
    # `BUSY_DERIVE_REPORTS` reports' events a second. (Twice as much cost ingest about a tenth
    # of its throughput under a saturating load, bench/README.md.)
    BUSY_PAUSE_SECONDS = 1.0
    BUSY_DERIVE_REPORTS = 125
    # Reports whose events are derived at a time otherwise: a transaction of about 0.2 s.
    DERIVE_REPORTS = 2000

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._pool = pool
        self._busy = busy
        self._settings = settings
        # The lease outlasts an attempt (its timeout) with room for the recording after it.
        self._lease_seconds = settings.webhooks_timeout_seconds * 3 + 10
        self._http = httpx.AsyncClient(
            timeout=settings.webhooks_timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": "status-tracker-webhooks"},
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        # Successful attempts waiting to be recorded, and the task recording them.
        self._delivered: list[outbox.Delivered] = []
        self._delivered_waiting = asyncio.Event()
        self._flushing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushing.set_result(None)
        self._recorder = asyncio.create_task(self._record_delivered())
        # Set when a derivation wrote events: their deliveries are due at once.
        self._derived = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._derive())]

    async def close(self) -> None:
        """Stop claiming; let attempts in flight finish (their leases would otherwise idle) and
        record them."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._recorder.cancel()
        await asyncio.gather(self._recorder, self._flushing, return_exceptions=True)
        await self._flush_delivered()
        await self._http.aclose()

    async def _record_delivered(self) -> None:
        while True:
            await self._delivered_waiting.wait()
            # Shielded: closing waits for a batch being recorded rather than dropping it.
            self._flushing = asyncio.ensure_future(self._flush_delivered())
            await asyncio.shield(self._flushing)

    async def _flush_delivered(self) -> None:
        batch, self._delivered = self._delivered, []
        self._delivered_waiting.clear()
        if not batch:
            return
        try:
            await outbox.record_delivered(self._pool, batch)
        except Exception as failure:
            # Their leases run out and they are attempted again: at least once.
            log.error("webhook attempts could not be recorded", exc_info=failure)

    async def _run(self) -> None:
        next_prune = next_backlog = time.monotonic()
        while True:
            try:
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.PRUNE_EVERY_SECONDS
                    while await outbox.prune(self._pool, self._settings.webhooks_retention_seconds):
                        pass
                if time.monotonic() >= next_backlog:
                    next_backlog = time.monotonic() + self.BACKLOG_EVERY_SECONDS
                    metrics.webhook_backlog(await outbox.oldest_pending_seconds(self._pool))
                busy = self._busy()
                self._derived.clear()
                more_due = await self._claim(busy)
            except Exception as error:
                if not is_unavailable(error):
                    log.error("webhook deliveries could not be claimed", exc_info=error)
                busy = more_due = False
            if not more_due:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._derived.wait(), self.POLL_SECONDS)
            elif busy:
                await asyncio.sleep(self.BUSY_PAUSE_SECONDS)

    async def _derive(self) -> None:
        """Turn the reports stored into outbox events and deliveries (`outbox.derive_events`)."""
        while True:
            try:
                busy = self._busy()
                reports = self.BUSY_DERIVE_REPORTS if busy else self.DERIVE_REPORTS
                taken = await outbox.derive_events(self._pool, reports)
            except Exception as error:
                if not is_unavailable(error):
                    log.error("webhook events could not be derived", exc_info=error)
                busy, taken, reports = False, 0, 1
            if taken:
                self._derived.set()
            if taken < reports:
                await asyncio.sleep(self.POLL_SECONDS)
            elif busy:
                await asyncio.sleep(self.BUSY_PAUSE_SECONDS)

    async def _claim(self, busy: bool) -> bool:
        """Once half the slots at least are free (all of them, while the process is busy), claim
        deliveries for them and start them; whether there may be more due already (every free
        slot was filled)."""
        concurrency = self._settings.webhooks_concurrency
        while len(self._in_flight) > (0 if busy else concurrency // 2):
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
        free = concurrency - len(self._in_flight)
        deliveries = await outbox.claim_deliveries(self._pool, free, self._lease_seconds)
        for delivery in deliveries:
            task = asyncio.create_task(self._deliver(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(deliveries) == free

    async def _deliver(self, delivery: asyncpg.Record) -> None:
        settings = self._settings
        body = render(delivery)
        message_id = webhook_id(delivery["event_id"])
        timestamp = int(time.time())
        signatures = [sign(delivery["secret"], message_id, timestamp, body)]
        if delivery["previous_secret"] is not None:
            signatures.append(sign(delivery["previous_secret"], message_id, timestamp, body))
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signatures),
        }
        attempted_at = datetime.now(UTC)
        started = time.monotonic()
        status_code: int | None = None
        excerpt: str | None = None
        error: str | None = None
        try:
            # Checked at each attempt too: the name may point elsewhere since it was registered.
            await check_destination(delivery["url"], settings.webhooks_allow_private)
            async with self._http.stream(
                "POST", delivery["url"], content=body, headers=headers
            ) as response:
                status_code = response.status_code
                excerpt = (await _first_bytes(response)).decode("utf-8", "replace")
        except UnsafeDestination as refused:
            error = f"refused: {refused}"
        except httpx.TimeoutException:
            error = f"no answer within {settings.webhooks_timeout_seconds:g} s"
        except httpx.HTTPError as failed:
            error = f"{type(failed).__name__}: {failed}"[:500]
        latency_ms = round((time.monotonic() - started) * 1000)
        delivered = status_code is not None and 200 <= status_code < 300
        metrics.webhook_attempt(_result(delivered, status_code, error))
        if status_code is not None and not delivered and error is None:
            error = f"answered {status_code}" + (
                " (redirects are not followed)" if 300 <= status_code < 400 else ""
            )
        if delivered and status_code is not None:
            self._delivered.append(
                outbox.Delivered(
                    delivery_id=delivery["id"],
                    endpoint_id=delivery["endpoint_id"],
                    attempted_at=attempted_at,
                    status_code=status_code,
                    latency_ms=latency_ms,
                    response_excerpt=excerpt,
                )
            )
            self._delivered_waiting.set()
            return
        try:
            await outbox.record_attempt(
                self._pool,
                delivery_id=delivery["id"],
                endpoint_id=delivery["endpoint_id"],
                attempted_at=attempted_at,
                status_code=status_code,
                latency_ms=latency_ms,
                response_excerpt=excerpt,
                error=error,
                delivered=delivered,
                retry_in_seconds=retry_delay(delivery["attempts"], settings.webhooks_retry_scale),
                disable_reason="the endpoint answered 410 Gone" if status_code == 410 else None,
                failing_for_seconds=DISABLE_AFTER_SECONDS * settings.webhooks_retry_scale,
            )
        except Exception as failure:
            # The lease runs out and the delivery is attempted again: at least once.
            log.error("a webhook attempt could not be recorded", exc_info=failure)


def _result(delivered: bool, status_code: int | None, error: str | None) -> str:
    """An attempt's result, as the metrics count it."""
    if delivered:
        return "delivered"
    if status_code == 410:
        return "gone"
    if error is not None and error.startswith("refused"):
        return "refused"
    if error is not None and error.startswith("no answer"):
        return "timeout"
    return "error"


async def _first_bytes(response: httpx.Response) -> bytes:
    kept = b""
    async for chunk in response.aiter_bytes():
        kept += chunk
        if len(kept) >= EXCERPT_BYTES:
            break
    return kept[:EXCERPT_BYTES]
