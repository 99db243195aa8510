"""Twilio's Messages API through the `twilio` SDK, with the project's own HTTP client."""

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from status_tracker.settings import Settings
from status_tracker.twilio_http import HttpxTwilioClient

# A 429 (code 20429) was never processed, so it is safe to retry; anything else is not.
RATE_LIMIT_RETRIES = 3
RATE_LIMIT_BACKOFF_SECONDS = 0.5


class TwilioApi:
    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.account_sid = account_sid
        self._http = HttpxTwilioClient(timeout=timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        if base_url:
            # Every /2010-04-01/... call goes there instead (the built-in simulator).
            self._client.api.base_url = base_url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> "TwilioApi | None":
        """The API the settings name, or None when Twilio is not configured."""
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            return None
        return cls(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            base_url=settings.twilio_api_base_url,
            timeout=settings.twilio_timeout_seconds,
        )

    async def create_message(self, **params: Any) -> Any:
        """`messages.create_async`, retried only on 429. Raises TwilioRestException or httpx's."""
        return await _retry_rate_limited(lambda: self._client.messages.create_async(**params))

    async def fetch_message(self, sid: str) -> Any:
        return await _retry_rate_limited(lambda: self._client.messages(sid).fetch_async())

    async def cancel_message(self, sid: str) -> Any:
        return await _retry_rate_limited(
            lambda: self._client.messages(sid).update_async(status="canceled")
        )

    async def list_messages(
        self,
        sent_after: datetime | None = None,
        sent_before: datetime | None = None,
        *,
        to: str | None = None,
    ) -> AsyncIterator[Any]:
        """Messages sent in the window (and to `to`), 1000 a page, newest first.

        Times go as UTC: the SDK does not convert zones. With a date filter, Twilio leaves out
        messages not sent yet (queued, scheduled, canceled before sending)."""
        filters: dict[str, Any] = {}
        if sent_after is not None:
            filters["date_sent_after"] = sent_after.astimezone(UTC)
        if sent_before is not None:
            filters["date_sent_before"] = sent_before.astimezone(UTC)
        if to is not None:
            filters["to"] = to
        # Page by page rather than `stream_async`, so that a 429 on any page is retried too.
        page = await _retry_rate_limited(
            lambda: self._client.messages.page_async(page_size=1000, **filters)
        )
        while page is not None:
            for message in page:
                yield message
            page = await _retry_rate_limited(page.next_page_async)

    async def close(self) -> None:
        await self._http.close()


async def _retry_rate_limited(call: Any) -> Any:
    for attempt in range(RATE_LIMIT_RETRIES + 1):
        try:
            return await call()
        except TwilioRestException as error:
            if error.status != 429 or attempt == RATE_LIMIT_RETRIES:
                raise
        backoff = RATE_LIMIT_BACKOFF_SECONDS * 2**attempt
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")
