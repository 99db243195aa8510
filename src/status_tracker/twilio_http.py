"""The Twilio SDK's HTTP client, on httpx.

The SDK's own async client ignores its timeout and, given `max_retries`, retries POSTs, which can
send an SMS twice. This one honours the timeout and makes exactly one attempt per call: a timeout
or a connection error propagates as the httpx exception, and the caller decides what it means
(for a create, "outcome unknown").
"""

import logging
import time
from typing import Any

import httpx
from twilio.http import AsyncHttpClient
from twilio.http.response import Response

_logger = logging.getLogger(__name__)


class HttpxTwilioClient(AsyncHttpClient):  # type: ignore[misc]
    def __init__(
        self,
        timeout: float = 10.0,
        *,
        logger: logging.Logger = _logger,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(logger, True, timeout)
        self._client = httpx.AsyncClient(transport=transport)

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
        started = time.perf_counter()
        response = await self._client.request(
            method.upper(),
            url,
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=self.timeout if timeout is None else timeout,
            follow_redirects=allow_redirects,
        )
        # Not the SDK's log_request: it logs query parameters, and list filters carry phone numbers.
        self.logger.info(
            "twilio request method=%s path=%s status=%d elapsed_ms=%d",
            method.upper(),
            response.request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return Response(response.status_code, response.text, response.headers)

    async def close(self) -> None:
        await self._client.aclose()
