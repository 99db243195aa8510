"""Reconciliation with Twilio: what callbacks never told us, found by asking (TWILIO.md §7).

A pass (1) fetches every outbound message that should be final by now and is not, and (2) lists
Twilio's messages sent in a window and compares them with the store: statuses that differ,
messages Twilio has and the store lacks, sends whose outcome was unknown, and messages Twilio
does not know. What can be settled is applied through the precedence rule, as events with source
`poll` or `reconcile`; what cannot is reported. Every pass is recorded.

Only a report that outranks the stored status is applied, so a second pass changes nothing, and
an interrupted pass can simply be run again. One pass runs at a time across all workers and
replicas (a PostgreSQL advisory lock).
"""

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from twilio.base.exceptions import TwilioRestException

from status_tracker import privacy, repository
from status_tracker.callbacks import StatusReport, channel_of
from status_tracker.precedence import Report
from status_tracker.settings import Settings
from status_tracker.twilio_api import TwilioApi

log = logging.getLogger(__name__)

# How far from a send attempt Twilio's record of it may be dated, to count as the same message.
MATCH_BEFORE = timedelta(minutes=1)
MATCH_AFTER = timedelta(minutes=10)
# A send still 'pending' this long after it was recorded lost its answer (a crash mid-send).
PENDING_GIVEN_UP_AFTER = timedelta(minutes=1)
WRITE_BATCH = 500

Progress = Callable[[str, int], None]


class PassRunning(Exception):
    """Another pass holds the lock."""


@dataclass
class Discrepancy:
    kind: str
    resolved: bool
    message_id: UUID | None = None
    sid: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassReport:
    reconciliation_id: int
    since: datetime
    until: datetime
    dry_run: bool
    state: str = "running"
    counts: Counter[str] = field(default_factory=Counter)
    unresolved: list[Discrepancy] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0


async def run_pass(
    pool: asyncpg.Pool,
    twilio: TwilioApi,
    settings: Settings,
    *,
    since: datetime,
    until: datetime,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> PassReport:
    """Run one pass over the window; raise PassRunning if another one holds the lock."""
    started = time.monotonic()
    async with pool.acquire() as lock:
        if not await repository.try_reconcile_lock(lock):
            raise PassRunning("another reconciliation pass is running")
        try:
            reconciliation_id = await repository.start_reconciliation(lock, since, until, dry_run)
            report = PassReport(reconciliation_id, since, until, dry_run)
            work = _Pass(pool, twilio, settings, report, progress)
            try:
                await work.poll_stale()
                await work.compare_window()
                await work.write()
                report.state = "finished"
            except Exception as error:
                log.exception("reconciliation pass failed")
                report.state = "failed"
                report.errors.append(f"{type(error).__name__}: {error}")
            report.duration_seconds = time.monotonic() - started
            await repository.finish_reconciliation(
                lock,
                reconciliation_id,
                state=report.state,
                counts=dict(report.counts),
                errors=report.errors,
                duration_seconds=report.duration_seconds,
                discrepancies=[
                    (d.kind, d.resolved, d.message_id, d.sid, d.detail) for d in report.unresolved
                ],
            )
        finally:
            await repository.release_reconcile_lock(lock)
    log.info("reconciliation pass", extra={"id": reconciliation_id, "state": report.state,
                                           "counts": dict(report.counts)})  # fmt: skip
    return report


async def run_periodically(pool: asyncpg.Pool, twilio: TwilioApi, settings: Settings) -> None:
    """The server's schedule: a pass over the last day every interval. Never raises."""
    while True:
        await asyncio.sleep(settings.reconcile_interval_seconds)
        until = datetime.now(UTC)
        try:
            await run_pass(pool, twilio, settings, since=until - timedelta(days=1), until=until)
        except PassRunning:
            log.info("reconciliation skipped: another pass is running")
        except Exception:
            log.exception("reconciliation pass could not run")


class _Pass:
    def __init__(
        self,
        pool: asyncpg.Pool,
        twilio: TwilioApi,
        settings: Settings,
        report: PassReport,
        progress: Progress | None,
    ) -> None:
        self.pool = pool
        self.twilio = twilio
        self.settings = settings
        self.report = report
        self.progress = progress
        self.limit = asyncio.Semaphore(settings.reconcile_concurrency)
        self.writes: list[StatusReport] = []
        self.seen = 0

    async def poll_stale(self) -> None:
        cutoff = datetime.now(UTC) - self.settings.stale_after
        stale = await repository.stale_messages(self.pool, cutoff)
        await asyncio.gather(*(self._check_with_twilio(row, "poll") for row in stale))

    async def compare_window(self) -> None:
        since, until = self.report.since, self.report.until
        at_twilio: dict[str, Any] = {}
        async for message in self.twilio.list_messages(since, until):
            # Twilio filters by day at worst: keep the window exact here.
            if message.date_sent is not None and since <= message.date_sent <= until:
                at_twilio[message.sid] = message
                self._tick("listed")
        known: dict[str, asyncpg.Record] = {}
        sids = list(at_twilio)
        for start in range(0, len(sids), 10_000):
            for row in await repository.messages_by_sid(self.pool, sids[start : start + 10_000]):
                known[row["sid"]] = row
        for sid, message in at_twilio.items():
            if sid in known:
                self._apply_if_outranks(known[sid], message, "reconcile")
        unknown_here = [message for sid, message in at_twilio.items() if sid not in known]
        matched = await self._match_unknown_attempts(unknown_here)
        for message in unknown_here:
            if message.sid not in matched:
                self._count("missing_locally")
                self._stage(message, "reconcile")
        # Local messages Twilio did not list: ask for each; it may not know them at all.
        local = await repository.sent_messages_between(self.pool, since, until)
        absent = [row for row in local if row["sid"] not in at_twilio]
        await asyncio.gather(*(self._check_with_twilio(row, "reconcile") for row in absent))

    async def write(self) -> None:
        if self.report.dry_run:
            return
        self.writes.sort(key=lambda report: report.sid or "")
        for start in range(0, len(self.writes), WRITE_BATCH):
            async with self.pool.acquire() as connection:
                await repository.record_reports(
                    connection, self.writes[start : start + WRITE_BATCH]
                )

    async def _check_with_twilio(self, row: asyncpg.Record, source: str) -> None:
        async with self.limit:
            try:
                message = await self.twilio.fetch_message(row["sid"])
            except TwilioRestException as error:
                if error.status == 404:
                    self._unresolved("not_at_twilio", row["id"], row["sid"],
                                     {"status": row["status"]})  # fmt: skip
                else:
                    self.report.errors.append(f"fetch {row['sid']}: {error.status} {error.msg}")
                return
        self._tick("fetched")
        self._apply_if_outranks(row, message, source)

    def _apply_if_outranks(self, row: asyncpg.Record, message: Any, source: str) -> None:
        theirs = Report(str(message.status), message.error_code)
        ours = Report(row["status"], row["error_code"])
        if theirs.key > ours.key:
            self._count("status_differs")
            self._stage(message, source)

    async def _match_unknown_attempts(self, candidates: Sequence[Any]) -> set[str]:
        """Give unknown-outcome sends their Twilio message where the match is unambiguous."""
        now = datetime.now(UTC)
        attempts = await repository.unsettled_attempts(
            self.pool,
            self.report.since - MATCH_AFTER,
            self.report.until,
            now - PENDING_GIVEN_UP_AFTER,
        )
        by_to: dict[str, list[Any]] = defaultdict(list)
        for message in candidates:
            # Stored numbers may be redacted: compare them as stored.
            by_to[privacy.redact_number(message.to, self.settings) or ""].append(message)
        fits: dict[UUID, frozenset[str]] = {}
        messages = {message.sid: message for message in candidates}
        for attempt in attempts:
            same_to = by_to.get(attempt["to_number"], [])
            fits[attempt["id"]] = frozenset(
                m.sid for m in same_to if _fits(attempt, m, self.settings)
            )
        # Attempts that fit the very same messages (same number, sender and body, close in
        # time) are told apart by order, when there are as many of each; otherwise not at all.
        groups: dict[frozenset[str], list[asyncpg.Record]] = defaultdict(list)
        for attempt in attempts:
            groups[fits[attempt["id"]]].append(attempt)
        claimed = Counter(sid for fitting in groups for sid in fitting)
        matched: set[str] = set()
        for fitting, group in groups.items():
            exclusive = all(claimed[sid] == 1 for sid in fitting)
            if fitting and exclusive and len(fitting) == len(group):
                in_order = sorted((messages[sid] for sid in fitting), key=_created_order)
                for attempt, message in zip(group, in_order, strict=True):
                    self._count("unknown_attempt_matched")
                    self._stage(message, "reconcile", message_id=attempt["id"])
                    matched.add(message.sid)
                continue
            for attempt in group:
                if not fitting:
                    self._unresolved("not_sent", attempt["id"], None, {
                        "to": attempt["to_number"],
                        "created_at": attempt["created_at"].isoformat(),
                        "explanation": "Twilio has no message to this number from this sender "
                        "around that time: the send most likely never reached it.",
                    })  # fmt: skip
                else:
                    self._unresolved("ambiguous_match", attempt["id"], None, {
                        "candidates": sorted(fitting),
                        "explanation": "Several of Twilio's messages fit this send; none applied.",
                    })  # fmt: skip
        return matched

    def _stage(self, message: Any, source: str, message_id: UUID | None = None) -> None:
        report = StatusReport(
            sid=message.sid,
            status=str(message.status),
            error_code=message.error_code,
            received_at=datetime.now(UTC),
            source=source,
            account_sid=message.account_sid,
            to=message.to,
            from_=message.from_,
            messaging_service_sid=message.messaging_service_sid,
            channel=channel_of((message.to, message.from_), message.sid.startswith("MM")),
            fields=_fields(message),
            message_id=message_id,
        )
        self.writes.append(privacy.scrub_report(report, self.settings))

    def _count(self, kind: str) -> None:
        self.report.counts[kind] += 1

    def _unresolved(
        self, kind: str, message_id: UUID | None, sid: str | None, detail: dict[str, Any]
    ) -> None:
        self._count(kind)
        self.report.unresolved.append(Discrepancy(kind, False, message_id, sid, detail))

    def _tick(self, phase: str) -> None:
        self.seen += 1
        if self.progress is not None and self.seen % 1000 == 0:
            self.progress(phase, self.seen)


def _fits(attempt: asyncpg.Record, message: Any, settings: Settings) -> bool:
    sender, service = attempt["from_number"], attempt["messaging_service_sid"]
    their_sender = privacy.redact_number(message.from_, settings)
    same_sender = (sender is not None and sender == their_sender) or (
        service is not None and service == message.messaging_service_sid
    )
    same_body = attempt["body"] is None or not message.body or attempt["body"] == message.body
    created = message.date_created
    return bool(
        same_sender
        and same_body
        and created is not None
        and attempt["created_at"] - MATCH_BEFORE <= created <= attempt["created_at"] + MATCH_AFTER
    )


def _created_order(message: Any) -> tuple[datetime, str]:
    return (message.date_created, message.sid)


def _fields(message: Any) -> dict[str, Any]:
    names = ("sid", "status", "error_code", "error_message", "date_created", "date_sent",
             "date_updated", "num_segments", "price")  # fmt: skip
    values = {name: getattr(message, name, None) for name in names}
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}
