"""Every Prometheus metric of the service, and the one function each caller uses to record it.

Metrics live in prometheus_client's process-wide registry, as the library intends: a counter is
the same object for the web layer, the writer, the reconciliation job and a CLI pass. A feature
that needs a metric adds it here with its recording function, and calls that (one line).

Labels are bounded by construction: statuses are the known ones (else `unknown`), error codes
the ones of `error_codes.DESCRIPTIONS` (else `other`), countries ISO codes; never a phone number
of a recipient, a SID or free text. The sender label (a Messaging Service SID, else the `From`
of the message) is as many values as the account has senders.

With several workers (`status-tracker serve --workers N`), `serve` points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start: each worker writes its
values there, and whichever answers `GET /metrics` sums them all. prometheus_client reads the
variable when it is first imported, so `MULTIPROCESS` is read at the same moment.
"""

import os
import time
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from status_tracker import countries
from status_tracker.error_codes import DESCRIPTIONS
from status_tracker.precedence import RANKS

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
CONTENT_TYPE = CONTENT_TYPE_LATEST
# A `_created` series beside every counter and histogram doubles what is scraped, for a start
# time that `rate()` and `increase()` do not need.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds, from a second to two days: callbacks come within seconds, receipts can take a day.
_DELAYS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400, 172800)

CALLBACKS = Counter(
    "status_tracker_callbacks_received",
    "Status callbacks received, by outcome (stored, duplicate, bad_signature, bad_request, "
    "too_large, too_slow, unavailable) and reported status.",
    ["outcome", "status"],
)
INGEST_BATCH_SIZE = Histogram(
    "status_tracker_ingest_batch_size",
    "Callbacks stored per transaction by the group-commit writer.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
INGEST_COMMIT = Histogram(
    "status_tracker_ingest_commit_duration_seconds",
    "Time to store and commit one batch of callbacks.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
INGEST_QUEUE = Gauge(
    "status_tracker_ingest_queue_depth",
    "Callbacks waiting for the database, summed over the live workers.",
    multiprocess_mode="livesum",
)
MESSAGE_FINAL = Counter(
    "status_tracker_message_final",
    "Outbound messages whose stored status became final, once per message, by that status, "
    "error code, recipient country (ISO 3166) and sender.",
    ["status", "error_code", "country", "sender"],
)
TIME_TO_FINAL = Histogram(
    "status_tracker_message_time_to_final_seconds",
    "From a message's creation (the send) to its first final status, by that status.",
    ["status"],
    buckets=_DELAYS,
)
CALLBACK_LAG = Histogram(
    "status_tracker_callback_lag_seconds",
    "From the carrier's RawDlrDoneDate to the callback's receipt (carrier clock, minute "
    "precision).",
    buckets=_DELAYS,
)
SENDS = Counter(
    "status_tracker_sends",
    "Sends through POST /v1/messages, by outcome (accepted, refused, unknown, rate_limited) and "
    "Twilio error code.",
    ["outcome", "error_code"],
)
TWILIO_REQUESTS = Histogram(
    "status_tracker_twilio_request_duration_seconds",
    "Calls to Twilio's REST API, by operation (create, fetch, list, update) and answer (HTTP "
    "status class, 429 on its own, or error when none came).",
    ["operation", "status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILIATIONS = Counter(
    "status_tracker_reconciliation_passes",
    "Reconciliation passes, by result (finished, failed).",
    ["result"],
)
DISCREPANCIES = Counter(
    "status_tracker_reconciliation_discrepancies",
    "What reconciliation passes found, by kind (status_differs, missing_locally, not_sent, …).",
    ["kind"],
)
RECONCILIATION_LAST = Gauge(
    "status_tracker_reconciliation_last_pass_timestamp_seconds",
    "When the last reconciliation pass ended (Unix time), by result.",
    ["result"],
    multiprocess_mode="max",
)
STALE_MESSAGES = Gauge(
    "status_tracker_reconciliation_stale_messages",
    "Outbound messages the last pass found not final STATUS_TRACKER_STALE_AFTER after they were "
    "created (and fetched from Twilio).",
    multiprocess_mode="mostrecent",
)

WEBHOOK_DELIVERIES = Counter(
    "status_tracker_webhook_deliveries",
    "Webhook delivery attempts, by result (delivered, gone, refused, timeout, error).",
    ["result"],
)
WEBHOOK_OLDEST = Gauge(
    "status_tracker_webhook_oldest_undelivered_seconds",
    "Age of the oldest webhook delivery still pending (0: none).",
    multiprocess_mode="max",
)

_KNOWN_STATUSES = frozenset(RANKS)
_ON = True


def enable(on: bool) -> None:
    """Record (the default) or not: `STATUS_TRACKER_METRICS=false` turns every call below into a
    no-op, which is how the ingest benchmark measures what metrics cost."""
    global _ON
    _ON = on


def status_label(status: str | None) -> str:
    if status is None:
        return "none"
    return status if status in _KNOWN_STATUSES else "unknown"


def error_code_label(code: int | None) -> str:
    if code is None:
        return "none"
    return str(code) if code in DESCRIPTIONS else "other"


def country_of(address: str | None) -> str:
    """A country label: the ISO 3166 code of a phone number (countries.country_of), `unknown` if
    it has none."""
    return countries.country_of(address) or "unknown"


def callback_received(outcome: str, status: str | None = None) -> None:
    if _ON:
        CALLBACKS.labels(outcome, status_label(status)).inc()


def callback_lag(carrier_done_at: datetime, received_at: datetime) -> None:
    if _ON:
        # The carrier's clock may run ahead of ours.
        CALLBACK_LAG.observe(max((received_at - carrier_done_at).total_seconds(), 0.0))


def ingest_batch(size: int, seconds: float, waiting: int) -> None:
    if _ON:
        INGEST_BATCH_SIZE.observe(size)
        INGEST_COMMIT.observe(seconds)
        INGEST_QUEUE.set(waiting)


def message_final(
    status: str, error_code: int | None, country: str, sender: str | None, seconds: float
) -> None:
    if _ON:
        MESSAGE_FINAL.labels(
            status_label(status), error_code_label(error_code), country, sender or "unknown"
        ).inc()
        TIME_TO_FINAL.labels(status_label(status)).observe(max(seconds, 0.0))


def send(outcome: str, error_code: int | None = None) -> None:
    if _ON:
        SENDS.labels(outcome, error_code_label(error_code)).inc()


def twilio_request(method: str, path: str, status: int | None, seconds: float) -> None:
    if not _ON:
        return
    # `…/Messages.json` is the collection (list, create), `…/Messages/SM….json` one message.
    collection = path.endswith("/Messages.json")
    if method == "GET":
        operation = "list" if collection else "fetch"
    else:
        operation = "create" if collection else "update"
    if status is None:
        answer = "error"
    elif status == 429:
        answer = "429"
    else:
        answer = f"{status // 100}xx"
    TWILIO_REQUESTS.labels(operation, answer).observe(seconds)


def reconciliation_pass(result: str, counts: dict[str, int], stale: int | None) -> None:
    if not _ON:
        return
    RECONCILIATIONS.labels(result).inc()
    RECONCILIATION_LAST.labels(result).set(time.time())
    for kind, count in counts.items():
        DISCREPANCIES.labels(kind).inc(count)
    if stale is not None:
        STALE_MESSAGES.set(stale)


def webhook_attempt(result: str) -> None:
    if _ON:
        WEBHOOK_DELIVERIES.labels(result).inc()


def webhook_backlog(oldest_seconds: float) -> None:
    if _ON:
        WEBHOOK_OLDEST.set(oldest_seconds)


def exposition() -> bytes:
    """The text format of every metric: of this process, or of every worker in multiprocess
    mode."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def process_exiting() -> None:
    """Forget this worker's live gauges (the queue depth), which no longer describe anything."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
