"""Structured (JSON) logs that carry no secrets and no full phone numbers."""

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

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
    return _PHONE.sub(lambda match: mask_number(match.group()) or "", text)


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
                entry[name] = _mask_text(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = _mask_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; the Twilio client logs its own, leaner line.
    logging.getLogger("httpx").setLevel(logging.WARNING)
