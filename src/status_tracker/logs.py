"""Structured (JSON) logs that carry no secrets and no full phone numbers."""

import json
import logging
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

# Attributes every LogRecord has; anything else was passed in `extra=` and is logged as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_PHONE = re.compile(r"\+\d{7,15}")


def mask_number(address: str | None) -> str | None:
    """`whatsapp:+14155550123` -> `whatsapp:+*******0123`: enough to tell numbers apart."""
    if not address:
        return address
    prefix, _, number = address.rpartition(":")
    visible = number[-4:]
    masked = re.sub(r"\d", "*", number[:-4]) + visible
    return f"{prefix}:{masked}" if prefix else masked


def _mask_text(text: str) -> str:
    # URLs carry numbers escaped (`to=%2B14155550199`, even `%252B…`): decode first, then mask.
    for _ in range(3):
        if "%" not in text:
            break
        text = unquote(text)
    return _PHONE.sub(lambda match: mask_number(match.group()) or "", text)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, dict):
        return {name: _mask(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": _mask_text(record.getMessage()),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD:
                entry[name] = _mask(value)
        if record.exc_info:
            entry["exception"] = _mask_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class RepeatFilter(logging.Filter):
    """Log a warning (or worse) once per `interval` seconds: during an outage every request fails
    the same way, and thousands of identical lines hide everything else. The first line after a
    quiet spell says how many identical ones were left out (`repeated`)."""

    def __init__(self, interval: float = 10.0, max_kept: int = 1000) -> None:
        super().__init__()
        self.interval = interval
        self.max_kept = max_kept
        self._seen: dict[tuple[Any, ...], tuple[float, int]] = {}  # key: (last logged, left out)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        extras = tuple(
            (name, str(value)) for name, value in record.__dict__.items() if name not in _STANDARD
        )
        error = repr(record.exc_info[1]) if record.exc_info else None
        key = (record.name, record.levelno, record.getMessage(), extras, error)
        now = time.monotonic()
        with self._lock:
            logged_at, left_out = self._seen.get(key, (float("-inf"), 0))
            if now - logged_at < self.interval:
                self._seen[key] = (logged_at, left_out + 1)
                return False
            if len(self._seen) >= self.max_kept:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
            self._seen[key] = (now, 0)
        if left_out:
            record.repeated = left_out
        return True


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; the Twilio client logs its own, leaner line.
    logging.getLogger("httpx").setLevel(logging.WARNING)
