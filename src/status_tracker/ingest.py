"""Group commit: the reports that arrive together are stored together.

A request hands its report to the writer and waits for its own commit; a flusher task takes
whatever is pending, up to a batch, and stores it in one transaction. Under light load
each report is flushed at once; under heavy load batches grow, so one commit (and one fsync)
serves many callbacks. The queue is bounded: past it, `Overloaded` is raised at once, so the
caller answers 503 instead of letting memory and latency grow without bound.
"""

import asyncio
import logging
import time
from collections import deque

import asyncpg

from status_tracker import metrics, repository
from status_tracker.callbacks import StatusReport
from status_tracker.database import is_unavailable

log = logging.getLogger(__name__)


# Reports stored together past which the writer counts as busy (under light load each report
# is stored alone).
BUSY_BATCH = 8
BUSY_SECONDS = 0.5


class Overloaded(Exception):
    """More reports are waiting than the writer accepts; retry later."""


_Pending = tuple[StatusReport, "asyncio.Future[bool]"]


class ReportWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_pending: int = 5000,
        flushers: int = 1,
        acquire_timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._acquire_timeout = acquire_timeout
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._flushers = [asyncio.create_task(self._flush_forever()) for _ in range(flushers)]
        self._in_flight = 0
        # Until when the writer counts as busy (monotonic time): for a while after a big batch.
        self._busy_until = 0.0

    async def write(self, report: StatusReport) -> bool:
        """Return once `report` is committed, with whether it changed its message; raise if it
        could not be stored."""
        if len(self._pending) >= self._max_pending:
            raise Overloaded(f"{len(self._pending)} reports are waiting to be stored")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((report, done))
        self._wakeup.set()
        return await done

    def busy(self) -> bool:
        """Whether reports queue for the database: they arrive faster than one commit each.
        Work off the callbacks' path (webhook deliveries) gives way meanwhile."""
        return len(self._pending) >= BUSY_BATCH or time.monotonic() < self._busy_until

    async def close(self) -> None:
        """Store what is pending, then stop the flushers."""
        while self._pending or self._in_flight:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        for flusher in self._flushers:
            flusher.cancel()
        await asyncio.gather(*self._flushers, return_exceptions=True)

    async def _flush_forever(self) -> None:
        # Each flusher keeps its connection: a checkout per batch would cost a reset round trip.
        connection: asyncpg.Connection | None = None
        try:
            while True:
                await self._wakeup.wait()
                if not self._pending:
                    self._wakeup.clear()
                    continue
                size = min(self._max_batch, len(self._pending))
                batch = [self._pending.popleft() for _ in range(size)]
                if size >= BUSY_BATCH:
                    self._busy_until = time.monotonic() + BUSY_SECONDS
                if not self._pending:
                    self._wakeup.clear()
                self._in_flight += 1
                try:
                    if connection is None:
                        connection = await self._pool.acquire(timeout=self._acquire_timeout)
                    await self._store(connection, batch)
                except Exception as error:
                    _fail(batch, error)
                    if not is_unavailable(error):
                        log.error("report refused by the database", exc_info=error)
                    if connection is not None:
                        # It may be broken; the pool checks or replaces it.
                        await self._pool.release(connection)
                        connection = None
                finally:
                    self._in_flight -= 1
        finally:
            if connection is not None:
                await self._pool.release(connection)

    async def _store(self, connection: asyncpg.Connection, batch: list[_Pending]) -> None:
        """Store the batch and settle each report's future; raise if none could be stored."""
        started = time.perf_counter()
        reports = [report for report, _ in batch]
        try:
            changed = await repository.record_reports(connection, reports)
        except Exception as error:
            if len(batch) == 1 or is_unavailable(error):
                raise
            # One report the database refuses must not fail those stored with it.
            for pending in batch:
                try:
                    await self._store(connection, [pending])
                except Exception as single_error:
                    if is_unavailable(single_error):
                        raise
                    log.error("report refused by the database", exc_info=single_error)
                    _fail([pending], single_error)
            return
        metrics.ingest_batch(len(batch), time.perf_counter() - started, len(self._pending))
        metrics.callbacks_stored(reports, changed)
        for (_, done), changed_message in zip(batch, changed, strict=True):
            if not done.done():
                done.set_result(changed_message)


def _fail(batch: list[_Pending], error: Exception) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(error)
