"""The Twilio SDK's HTTP client, on httpx.

The SDK's own async client ignores its timeout and, given `max_retries`, retries POSTs, which can
send an SMS twice. This one honours the timeout and makes exactly one attempt per POST: a timeout
or a connection error propagates as the httpx exception, and the caller decides what it means
(for a create, "outcome unknown").

A GET changes nothing at Twilio, so a 429 or a 5xx answer to one (a fetch or any list page) is
retried here, below the SDK: in twilio 9.13 a failed list page raises a plain `TwilioException`
that carries no status, so no caller above could tell a 429 from a 404. Retries back off
exponentially with jitter, wait at least what `Retry-After` asks, and stop at a bounded budget
(attempts and seconds of waiting); then the last answer goes to the SDK as it came.
"""

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from twilio.http import AsyncHttpClient
from twilio.http.response import Response

from status_tracker import metrics

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How a GET answered 429 or 5xx is retried."""

    attempts: int = 10  # retries after the first try
    backoff_seconds: float = 0.5  # the first wait; doubled each time, with jitter
    max_wait_seconds: float = 30.0  # no single wait longer (Retry-After included)
    budget_seconds: float = 120.0  # total waiting per request

    def wait(self, retry: int, retry_after: float | None) -> float:
        backoff: float = self.backoff_seconds * 2**retry * random.uniform(0.5, 1.0)
        return min(max(backoff, retry_after or 0.0), self.max_wait_seconds)


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds: a number of seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


class HttpxTwilioClient(AsyncHttpClient):  # type: ignore[misc]
    def __init__(
        self,
        timeout: float = 10.0,
        *,
        logger: logging.Logger = _logger,
        transport: httpx.AsyncBaseTransport | None = None,
        get_retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(logger, True, timeout)
        self._client = httpx.AsyncClient(transport=transport)
        self.get_retry = RetryPolicy() if get_retry is None else get_retry
        self._sleep = sleep

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's interface
        allow_redirects: bool = False,
    ) -> Response:
        if timeout is not None and timeout <= 0:
            raise ValueError(timeout)
        method = method.upper()
        policy = self.get_retry
        waited = 0.0
        retry = 0
        while True:
            response = await self._once(
                method, url, params, data, headers, auth, timeout, allow_redirects
            )
            if method != "GET" or not retryable(response.status_code) or retry >= policy.attempts:
                break
            wait = policy.wait(retry, retry_after_seconds(response.headers.get("retry-after")))
            if waited + wait > policy.budget_seconds:
                break
            self.logger.warning(
                "twilio GET retried status=%d path=%s retry=%d wait_s=%.2f",
                response.status_code,
                response.request.url.path,
                retry + 1,
                wait,
            )
            await self._sleep(wait)
            waited += wait
            retry += 1
        return Response(response.status_code, response.text, response.headers)

    async def _once(
        self,
        method: str,
        url: str,
        params: dict[str, Any] | None,
        data: dict[str, Any] | None,
        headers: dict[str, str] | None,
        auth: tuple[str, str] | None,
        timeout: float | None,  # noqa: ASYNC109 - the SDK's interface
        allow_redirects: bool,
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self._client.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                auth=auth,
                timeout=self.timeout if timeout is None else timeout,
                follow_redirects=allow_redirects,
            )
        except httpx.HTTPError:
            metrics.twilio_request(method, httpx.URL(url).path, None, time.perf_counter() - started)
            raise
        metrics.twilio_request(
            method, response.request.url.path, response.status_code, time.perf_counter() - started
        )
        # Not the SDK's log_request: it logs query parameters, and list filters carry phone numbers.
        self.logger.info(
            "twilio request method=%s path=%s status=%d elapsed_ms=%d",
            method,
            response.request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    async def close(self) -> None:
        await self._client.aclose()
