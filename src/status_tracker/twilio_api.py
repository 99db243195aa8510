"""Twilio's Messages API through the `twilio` SDK, with the project's own HTTP client."""

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from status_tracker.settings import Settings
from status_tracker.twilio_http import HttpxTwilioClient, RetryPolicy

# A create or a cancel answered 429 (code 20429) was never processed, so it is safe to retry;
# anything else is not. GETs (fetches, list pages) are retried by the HTTP client itself, on 429
# and 5xx alike.
RATE_LIMIT_RETRIES = 3
RATE_LIMIT_BACKOFF_SECONDS = 0.5


class TwilioApi:
    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_key: tuple[str, str] | None = None,
        base_url: str | None = None,
        timeout: float = 10.0,
        get_retry: RetryPolicy | None = None,
        page_size: int = 1000,
    ) -> None:
        self.account_sid = account_sid
        self.page_size = page_size
        self._http = HttpxTwilioClient(timeout=timeout, get_retry=get_retry)
        # An API key (SID, secret), Twilio's recommended credentials, authenticates instead of
        # the auth token when given; the account's SID still names the account in every URL.
        username, password = api_key or (account_sid, auth_token)
        self._client = Client(username, password, account_sid, http_client=self._http)
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
        return await self._client.messages(sid).fetch_async()

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
        async for messages, _ in self.list_pages(sent_after, sent_before, to=to):
            for message in messages:
                yield message

    async def list_pages(
        self,
        sent_after: datetime | None = None,
        sent_before: datetime | None = None,
        *,
        to: str | None = None,
        start_url: str | None = None,
    ) -> AsyncIterator[tuple[list[Any], str | None]]:
        """`list_messages` a page at a time: each page's messages and the URL of the next one.

        `start_url` (a next-page URL given before) continues a listing where it stopped. A page
        that still fails after the HTTP client's retries raises `TwilioException`."""
        if start_url is not None:
            page = await self._client.messages.get_page_async(start_url)
        else:
            filters: dict[str, Any] = {}
            if sent_after is not None:
                filters["date_sent_after"] = sent_after.astimezone(UTC)
            if sent_before is not None:
                filters["date_sent_before"] = sent_before.astimezone(UTC)
            if to is not None:
                filters["to"] = to
            page = await self._client.messages.page_async(page_size=self.page_size, **filters)
        while page is not None:
            next_url = page.next_page_url
            yield list(page), next_url
            page = await page.next_page_async() if next_url else None

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
