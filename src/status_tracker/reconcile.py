"""Reconciliation with Twilio: what callbacks never told us, found by asking (TWILIO.md §7).

A pass (1) fetches every outbound message that should be final by now and is not, and (2) lists
Twilio's messages sent in a window and compares them with the store: statuses that differ,
messages Twilio has and the store lacks, sends whose outcome was unknown, and messages Twilio
does not know. What can be settled is applied through the precedence rule, as events with source
`poll` or `reconcile`; what cannot is reported. Every pass is recorded.

Only a report that outranks the stored status is applied, so a second pass changes nothing, and
an interrupted pass can simply be run again. A final status of Twilio's that ranks below the
stored one is a conflict: logged once (not applied) and reported. The window listing is applied
page by page and its place saved, so that a pass Twilio's outage stopped is resumed there. One
pass runs at a time across all workers and replicas (a PostgreSQL advisory lock).

Each stored account (accounts.py) is reconciled by passes of its own, with its own credentials,
concurrency, 429 retry budget (its own HTTP client), lock and record; the default account's
passes cover the messages of no stored account.
"""

import asyncio
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from twilio.base.exceptions import TwilioRestException

from status_tracker import metrics, privacy, repository
from status_tracker.accounts import Account, AccountDirectory, twilio_api
from status_tracker.callbacks import StatusReport, channel_of
from status_tracker.precedence import Report, conflicts
from status_tracker.settings import Settings
from status_tracker.twilio_api import TwilioApi

log = logging.getLogger(__name__)

# How far from a send attempt Twilio's record of it may be dated, to count as the same message.
MATCH_BEFORE = timedelta(minutes=1)
MATCH_AFTER = timedelta(minutes=10)
# A send still 'pending' this long after it was recorded lost its answer (a crash mid-send).
PENDING_GIVEN_UP_AFTER = timedelta(minutes=1)
# Stale messages are polled for this long after they became stale, then no more: a status that
# has not moved in a week will not (carriers that never confirm leave messages `sent` forever),
# and polling them on every pass would grow without end. A window pass still compares them.
STALE_GIVEN_UP_AFTER = timedelta(days=7)
WRITE_BATCH = 500
# Errors kept in a pass's record; the rest are only counted (`fetch_errors`).
MAX_ERRORS = 100
# Accounts the schedule reconciles at once: each pass holds a connection of the pool.
ACCOUNTS_AT_ONCE = 2

Progress = Callable[[str, int], None]


class PassRunning(Exception):
    """Another pass holds the lock."""


class PassNotDue(Exception):
    """A pass finished recently enough (another worker's schedule ran it)."""


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
    unless_finished_after: datetime | None = None,
    account_sid: str | None = None,
) -> PassReport:
    """Run one pass over the window; raise PassRunning if another one holds the lock.

    With `unless_finished_after`, raise PassNotDue instead of running if a pass (not a dry run)
    finished after that time: each worker's schedule asks, and only one of them runs.
    `account_sid` names the stored account `twilio` is a client of (None: the default one)."""
    started = time.monotonic()
    async with pool.acquire() as lock:
        if not await repository.try_reconcile_lock(lock, account_sid):
            raise PassRunning("another reconciliation pass is running")
        try:
            if unless_finished_after is not None:
                last = await repository.last_pass_finished_at(lock, account_sid)
                if last is not None and last > unless_finished_after:
                    raise PassNotDue(f"a pass finished at {last.isoformat()}")
            resume = None
            if not dry_run:
                stopped = await repository.last_resumable_pass(lock, account_sid)
                if stopped is not None and (stopped["since"], stopped["until"]) == (since, until):
                    resume = stopped["resume"]
            reconciliation_id = await repository.start_reconciliation(
                lock, since, until, dry_run, account_sid
            )
            report = PassReport(reconciliation_id, since, until, dry_run)
            work = _Pass(pool, twilio, settings, report, progress, resume, account_sid)
            try:
                # Each phase's changes are written before the next starts: an interrupted pass
                # keeps what it settled, and the comparison reads what the polls applied.
                await work.poll_stale()
                await work.write()
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
            await repository.release_reconcile_lock(lock, account_sid)
    if not dry_run:
        metrics.reconciliation_pass(report.state, dict(report.counts), work.stale)
    log.info("reconciliation pass", extra={"id": reconciliation_id, "state": report.state,
                                           "account": account_sid,
                                           "counts": dict(report.counts)})  # fmt: skip
    return report


async def run_periodically(
    pool: asyncpg.Pool,
    twilio: TwilioApi | None,
    settings: Settings,
    directory: AccountDirectory | None = None,
) -> None:
    """The server's schedule: a pass over the last day every interval, for the default account
    (`twilio`, if configured) and each stored account of `directory`. Never raises.

    Every worker of every replica runs this loop; the lock lets one pass of an account run at a
    time, and a worker whose turn comes less than half an interval after another's pass skips
    it. The first passes come soon after start (at most five minutes), to catch up after an
    outage. ACCOUNTS_AT_ONCE accounts are reconciled at a time: each pass holds a connection."""
    interval = settings.reconcile_interval_seconds
    # Jittered so that workers started together spread out: the first pass only downwards, so
    # that it does come within five minutes; the next ones by 10 % either way.
    delay = min(interval, 300.0) * random.uniform(0.5, 1.0)
    while True:
        await asyncio.sleep(delay)
        delay = interval * random.uniform(0.9, 1.1)
        await _reconcile_every_account(pool, twilio, settings, directory, interval)


async def _reconcile_every_account(
    pool: asyncpg.Pool,
    twilio: TwilioApi | None,
    settings: Settings,
    directory: AccountDirectory | None,
    interval: float,
) -> None:
    gate = asyncio.Semaphore(ACCOUNTS_AT_ONCE)

    async def reconcile_default(client: TwilioApi) -> None:
        async with gate:
            await _scheduled_pass(pool, client, settings, interval, None)

    async def reconcile_account(account: Account) -> None:
        async with gate:
            # A client for the pass alone: one kept for each of thousands of accounts would
            # hold as many connection pools.
            client = twilio_api(account, settings)
            try:
                await _scheduled_pass(pool, client, settings, interval, account.sid)
            finally:
                await client.close()

    stored = [directory.account(sid) for sid in directory.sids()] if directory else []
    await asyncio.gather(
        *([reconcile_default(twilio)] if twilio else []),
        *(reconcile_account(account) for account in stored if account is not None),
    )


async def _scheduled_pass(
    pool: asyncpg.Pool,
    twilio: TwilioApi,
    settings: Settings,
    interval: float,
    account_sid: str | None,
) -> None:
    until = datetime.now(UTC)
    since = until - timedelta(days=1)
    try:
        # A pass that stopped mid-listing (Twilio down past the retry budget) is taken up
        # where it stopped, over its own window, before the schedule moves on.
        stopped = await resumable_window(pool, account_sid)
        if stopped is not None:
            since, until = stopped
        await run_pass(
            pool, twilio, settings, since=since, until=until, account_sid=account_sid,
            unless_finished_after=None if stopped else until - timedelta(seconds=interval / 2),
        )  # fmt: skip
    except PassRunning:
        log.info("reconciliation skipped: another pass is running")
    except PassNotDue:
        log.info("reconciliation skipped: another worker ran one recently")
    except Exception:
        log.exception("reconciliation pass could not run", extra={"account": account_sid})


async def resumable_window(
    pool: asyncpg.Pool, account_sid: str | None = None
) -> tuple[datetime, datetime] | None:
    """The window of the account's latest pass if it stopped mid-listing: running it again
    resumes it."""
    stopped = await repository.last_resumable_pass(pool, account_sid)
    return None if stopped is None else (stopped["since"], stopped["until"])


class _Pass:
    def __init__(
        self,
        pool: asyncpg.Pool,
        twilio: TwilioApi,
        settings: Settings,
        report: PassReport,
        progress: Progress | None,
        resume: dict[str, Any] | None = None,
        account_sid: str | None = None,
    ) -> None:
        self.pool = pool
        # The messages this pass reconciles: the account's (see repository.pass_scope).
        self.scope = (account_sid, settings.twilio_account_sid)
        self.resume = resume
        self.twilio = twilio
        self.settings = settings
        self.report = report
        self.progress = progress
        self.limit = asyncio.Semaphore(settings.reconcile_concurrency)
        self.writes: list[StatusReport] = []
        self.inbound: list[tuple[StatusReport, str | None]] = []
        # Twilio's answers that rank below the stored status: logged (once) and reported.
        self.conflicts: list[tuple[asyncpg.Record, Any, str]] = []
        # SIDs whose state at Twilio this pass already has: each is fetched and applied once.
        self.checked: set[str] = set()
        self.seen = 0
        # Messages not final past STATUS_TRACKER_STALE_AFTER, as found by poll_stale.
        self.stale: int | None = None

    async def poll_stale(self) -> None:
        cutoff = datetime.now(UTC) - self.settings.stale_after
        stale = await repository.stale_messages(
            self.pool, cutoff - STALE_GIVEN_UP_AFTER, cutoff, *self.scope
        )
        self.stale = len(stale)
        self.checked.update(row["sid"] for row in stale)
        await asyncio.gather(*(self._check_with_twilio(row, "poll") for row in stale))

    async def compare_window(self) -> None:
        since, until = self.report.since, self.report.until
        attempts = await repository.unsettled_attempts(
            self.pool,
            since - MATCH_AFTER,
            until,
            datetime.now(UTC) - PENDING_GIVEN_UP_AFTER,
            *self.scope,
        )
        by_to: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for attempt in attempts:
            by_to[attempt["to_number"] or ""].append(attempt)
        # Listed messages the store lacks that an unknown send may claim: settled once the whole
        # window is listed. The others are added page by page.
        at_twilio: dict[str, Any] = {}
        start_url = None
        if self.resume is not None:
            # Carried forward first: should Twilio still be down, the next pass resumes here too.
            await repository.save_resume(self.pool, self.report.reconciliation_id, self.resume)
            start_url = self.resume.get("next_page_url")
            self._count("resumed")
            for sid in self.resume.get("unknown", []):
                # A failure here stops the pass (Twilio is still down), the cursor kept.
                at_twilio[sid] = await self.twilio.fetch_message(sid)
        # Page by page, each page's findings written before the next is asked for, and where the
        # listing stands saved with the pass: if Twilio stays down past the retry budget, the
        # pass fails, and the next one over this window resumes at the page that failed.
        pages = self.twilio.list_pages(since, until, start_url=start_url)
        async for listed, next_url in pages:
            page: dict[str, Any] = {}
            for message in listed:
                # Twilio filters by day at worst: keep the window exact here.
                if message.date_sent is not None and since <= message.date_sent <= until:
                    page[message.sid] = message
                    self._tick("listed")
            known = {
                row["sid"]: row for row in await repository.messages_by_sid(self.pool, list(page))
            }
            for sid, message in page.items():
                if sid in known:
                    if sid not in self.checked:
                        self._compare(known[sid], message, "reconcile")
                elif message.direction != "inbound" and any(
                    _fits(attempt, message, self.settings)
                    for attempt in by_to[privacy.redact_number(message.to, self.settings) or ""]
                ):
                    at_twilio[sid] = message
                else:
                    self._add_missing(message)
            self.checked.update(page)
            await self.write()
            if not self.report.dry_run:
                resume = (
                    {"next_page_url": next_url, "unknown": sorted(at_twilio)} if next_url else None
                )
                await repository.save_resume(self.pool, self.report.reconciliation_id, resume)
        known_now = {
            row["sid"] for row in await repository.messages_by_sid(self.pool, list(at_twilio))
        }
        unknown_here = [m for sid, m in at_twilio.items() if sid not in known_now]
        outbound = [m for m in unknown_here if m.direction != "inbound"]
        claimed = await self._match_unknown_attempts(outbound, attempts)
        for message in unknown_here:
            if message.sid not in claimed:
                self._add_missing(message)
        self.checked.update(at_twilio)
        # Local messages Twilio did not list: ask for each; it may not know them at all.
        local = await repository.sent_messages_between(self.pool, since, until, *self.scope)
        absent = [row for row in local if row["sid"] not in self.checked]
        self.checked.update(row["sid"] for row in absent)
        await asyncio.gather(*(self._check_with_twilio(row, "reconcile") for row in absent))

    def _add_missing(self, message: Any) -> None:
        self._count("missing_locally")
        if message.direction == "inbound":
            # Our inbound webhook missed it: stored as inbound, with no reply sent.
            self.inbound.append((self._report(message, "inbound"), message.body))
        else:
            self._stage(message, "reconcile")

    async def write(self) -> None:
        await self._settle_conflicts()
        writes, self.writes = self.writes, []
        inbound, self.inbound = self.inbound, []
        if self.report.dry_run:
            return
        for start in range(0, len(writes), WRITE_BATCH):
            async with self.pool.acquire() as connection:
                await repository.record_reports(connection, writes[start : start + WRITE_BATCH])
        for report, body in inbound:
            await repository.record_inbound(
                self.pool, report, privacy.body(body, self.settings), None
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
                    self._error(f"fetch {row['sid']}: {error.status} {error.msg}")
                return
            except httpx.HTTPError as error:
                # Timeouts and refused connections: this message is simply not checked this
                # time; the next pass asks again.
                self._error(f"fetch {row['sid']}: {type(error).__name__} {error}")
                return
        self._tick("fetched")
        self._compare(row, message, source)

    def _error(self, text: str) -> None:
        self._count("fetch_errors")
        if len(self.report.errors) < MAX_ERRORS:
            self.report.errors.append(text)

    def _compare(self, row: asyncpg.Record, message: Any, source: str) -> None:
        theirs = Report(str(message.status), message.error_code)
        ours = Report(row["status"], row["error_code"])
        if theirs.key > ours.key:
            self._count("status_differs")
            self._stage(message, source)
        elif conflicts(ours.status, theirs.status):
            self.conflicts.append((row, message, source))

    async def _settle_conflicts(self) -> None:
        """Twilio's final status ranks below the stored one (say `undelivered` under a
        `delivered` callback: one segment of several failed). The rule keeps the stored status;
        Twilio's answer goes to the event log once (it changes nothing there) and is reported."""
        found, self.conflicts = self.conflicts, []
        if not found:
            return
        logged = await repository.reported_by_reconciliation(
            self.pool, [r["id"] for r, _, _ in found]
        )
        for row, message, source in found:
            status, code = str(message.status), message.error_code
            self._unresolved("status_conflict", row["id"], row["sid"], {
                "stored_status": row["status"], "stored_error_code": row["error_code"],
                "twilio_status": status, "twilio_error_code": code,
                "explanation": f"Twilio's message says {status}, which ranks below the stored "
                f"{row['status']}: its reports conflict. The stored status stands by the "
                "precedence rule; Twilio's answer is in the message's event log.",
            })  # fmt: skip
            if (row["id"], status, code) not in logged:
                self._stage(message, source, message_id=row["id"])

    async def _match_unknown_attempts(
        self, listed: Sequence[Any], attempts: Sequence[asyncpg.Record]
    ) -> set[str]:
        """Give unknown-outcome sends their Twilio message where the match is unambiguous.

        Returns the SIDs this settled or holds as candidates of an ambiguous match: those are
        not added as messages of their own, so that the next pass reports the same ambiguity
        (and not a `not_sent`) until an operator settles it."""
        if not attempts:
            return set()
        messages = {message.sid: message for message in listed}
        fits = self._fits_by_attempt(attempts, messages.values())
        # An attempt with nothing in the window listing may still be at Twilio: not sent yet
        # (scheduled, queued), or dated just outside the window. Ask by its number, which the
        # store has unless numbers are redacted.
        lonely = {a["to_number"] for a in attempts if not fits[a["id"]] and a["to_number"]}
        if lonely and self.settings.redact_numbers == "none":
            for message in await self._messages_to(lonely, attempts):
                messages.setdefault(message.sid, message)
            fits = self._fits_by_attempt(attempts, messages.values())
        # Attempts that fit the very same messages (same number, sender and body, close in
        # time) are told apart by order, when there are as many of each; otherwise not at all.
        groups: dict[frozenset[str], list[asyncpg.Record]] = defaultdict(list)
        for attempt in attempts:
            groups[fits[attempt["id"]]].append(attempt)
        claims = Counter(sid for fitting in groups for sid in fitting)
        claimed: set[str] = set(claims)
        for fitting, group in groups.items():
            exclusive = all(claims[sid] == 1 for sid in fitting)
            if fitting and exclusive and len(fitting) == len(group):
                in_order = sorted((messages[sid] for sid in fitting), key=_created_order)
                for attempt, message in zip(group, in_order, strict=True):
                    self._count("unknown_attempt_matched")
                    self._stage(message, "reconcile", message_id=attempt["id"])
                continue
            for attempt in group:
                if not fitting:
                    self._unresolved("not_sent", attempt["id"], None, {
                        "to": attempt["to_number"],
                        "created_at": attempt["created_at"].isoformat(),
                        "explanation": "Twilio has no message to this number from this sender "
                        "around that time: the send most likely never reached it. Send it "
                        "again if it is still wanted.",
                    })  # fmt: skip
                else:
                    self._unresolved("ambiguous_match", attempt["id"], None, {
                        "to": attempt["to_number"],
                        "created_at": attempt["created_at"].isoformat(),
                        "candidates": sorted(fitting),
                        "explanation": "Twilio's messages that fit this send (number, sender, "
                        "body, time) fit other sends too, in numbers that order cannot settle: "
                        "none applied; check the candidates by hand.",
                    })  # fmt: skip
        return claimed

    def _fits_by_attempt(
        self, attempts: Sequence[asyncpg.Record], messages: Iterable[Any]
    ) -> dict[UUID, frozenset[str]]:
        by_to: dict[str, list[Any]] = defaultdict(list)
        for message in messages:
            # Stored numbers may be redacted: compare them as stored.
            by_to[privacy.redact_number(message.to, self.settings) or ""].append(message)
        return {
            attempt["id"]: frozenset(
                m.sid
                for m in by_to.get(attempt["to_number"], [])
                if _fits(attempt, m, self.settings)
            )
            for attempt in attempts
        }

    async def _messages_to(
        self, numbers: set[str], attempts: Sequence[asyncpg.Record]
    ) -> list[Any]:
        """Twilio's outbound messages to these numbers around the attempts, unknown locally."""
        oldest = min(a["created_at"] for a in attempts) - MATCH_BEFORE

        async def to(number: str) -> list[Any]:
            found = []
            async with self.limit:
                async for message in self.twilio.list_messages(to=number):
                    # Newest first: past a message sent before the oldest attempt, every
                    # later one was also created before it.
                    if message.date_sent is not None and message.date_sent < oldest:
                        break
                    if message.direction != "inbound" and message.sid not in self.checked:
                        found.append(message)
            return found

        found = [m for batch in await asyncio.gather(*map(to, sorted(numbers))) for m in batch]
        known = await repository.messages_by_sid(self.pool, [m.sid for m in found])
        known_sids = {row["sid"] for row in known}
        return [m for m in found if m.sid not in known_sids]

    def _stage(self, message: Any, source: str, message_id: UUID | None = None) -> None:
        self.writes.append(self._report(message, source, message_id))

    def _report(self, message: Any, source: str, message_id: UUID | None = None) -> StatusReport:
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
        return privacy.scrub_report(report, self.settings)

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
