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
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable, Sequence

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
from status_tracker.callbacks import StatusReport
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
    "Age of the oldest webhook delivery still pending, or stored report whose events are not "
    "yet derived (0: none).",
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
    """One callback that was not stored (refused, or the database unavailable)."""
    if _ON:
        CALLBACKS.labels(outcome, status_label(status)).inc()


# At 13,000 callbacks/s a worker has about 75 µs per callback, and one labelled increment or
# observation costs 2 to 5 µs (a label lookup and a lock): per callback, the metrics alone would
# cost ingest more than the 3 % they may. So the writer records each committed batch at once:
# one increment per label set, and one per histogram bucket, whatever the batch's size.


def callbacks_stored(reports: Sequence[StatusReport], changed: Sequence[bool]) -> None:
    """A committed batch of status callbacks: each `stored` if it changed its message, else
    `duplicate`; and the lag of those that carry the carrier's time (RawDlrDoneDate)."""
    if not _ON:
        return
    outcomes = Tally(
        ("stored" if changed_message else "duplicate", status_label(report.status))
        for report, changed_message in zip(reports, changed, strict=True)
    )
    for (outcome, status), count in outcomes.items():
        CALLBACKS.labels(outcome, status).inc(count)
    _observe_all(
        CALLBACK_LAG,
        # The carrier's clock may run ahead of ours.
        (
            max((report.received_at - report.carrier_done_at).total_seconds(), 0.0)
            for report in reports
            if report.carrier_done_at is not None
        ),
    )


def ingest_batch(size: int, seconds: float, waiting: int) -> None:
    if _ON:
        INGEST_BATCH_SIZE.observe(size)
        INGEST_COMMIT.observe(seconds)
        INGEST_QUEUE.set(waiting)


# A message that became final: status, error code, country, sender, and seconds since its send.
Final = tuple[str, int | None, str, str | None, float]


def messages_final(finals: Iterable[Final]) -> None:
    """Messages a committed statement made final, each counted once."""
    if not _ON:
        return
    counts: Tally[tuple[str, str, str, str]] = Tally()
    delays: dict[str, list[float]] = {}
    for status, error_code, country, sender, seconds in finals:
        label = status_label(status)
        counts[label, error_code_label(error_code), country, sender or "unknown"] += 1
        delays.setdefault(label, []).append(max(seconds, 0.0))
    for labels, count in counts.items():
        MESSAGE_FINAL.labels(*labels).inc(count)
    for label, observed in delays.items():
        _observe_all(TIME_TO_FINAL.labels(label), observed)


def _observe_all(histogram: Histogram, values: Iterable[float]) -> None:
    """`histogram.observe(value)` for each value, adding to each bucket and to the sum once.
    It reaches for the same attributes `observe` itself uses (prometheus_client has no public
    way to observe in bulk); tests/test_metrics.py checks that both give the same exposition."""
    bounds = histogram._upper_bounds
    per_bucket = [0] * len(bounds)
    total = 0.0
    for value in values:
        # The first bucket whose bound is at least the value (the last bound is +Inf).
        per_bucket[bisect_left(bounds, value)] += 1
        total += value
    if not any(per_bucket):
        return
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, per_bucket, strict=True):
        if count:
            bucket.inc(count)


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
