"""What the tests share: Twilio-signed requests, made with the twilio SDK's own validator, and
a wait for what happens in the background."""

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from status_tracker.callbacks import Form

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
SECONDARY_TOKEN = "rotated-auth-token-fedcba9876543210"
API_KEY = "st_test_key"
ACCOUNT_SID = "AC" + "0" * 32
PUBLIC_URL = "https://tracker.example.com"
STATUS_PATH = "/webhooks/twilio/status"


def new_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


def callback_fields(sid: str, status: str, **extra: str) -> dict[str, str]:
    fields = {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": ACCOUNT_SID,
        "From": "+15005550006",
        "To": "+14155550100",
        "ApiVersion": "2010-04-01",
    }
    fields.update(extra)
    return fields


def signed(
    fields: dict[str, str] | list[tuple[str, str]],
    *,
    path: str = STATUS_PATH,
    query: str = "",
    token: str = AUTH_TOKEN,
    public_url: str = PUBLIC_URL,
) -> tuple[str, bytes, dict[str, str]]:
    """(path with query, body, headers) of a request as Twilio would send it to `public_url`."""
    pairs = list(fields.items()) if isinstance(fields, dict) else fields
    target = f"{path}?{query}" if query else path
    signature = RequestValidator(token).compute_signature(public_url + target, Form(pairs))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature,
    }
    return target, urlencode(pairs).encode(), headers


async def wait_until(check: Callable[[], Awaitable[bool]], within: float) -> None:
    """Return once `check()` is true; fail if it is still false after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)
