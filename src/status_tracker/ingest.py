"""Group commit: the reports that arrive together are stored together.

A request hands its report to the writer and waits for its own commit; a few flusher tasks take
whatever is pending, up to a batch, and store it in one pipelined transaction. Under light load
each report is flushed at once; under heavy load batches grow, so one commit (and one fsync)
serves many callbacks. The queue is bounded: past it, `Overloaded` is raised at once, so the
caller answers 503 instead of letting memory and latency grow without bound.
"""

import asyncio
import logging
from collections import deque

import asyncpg

from status_tracker import repository
from status_tracker.callbacks import StatusReport
from status_tracker.database import is_unavailable

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """More reports are waiting than the writer accepts; retry later."""


_Pending = tuple[StatusReport, "asyncio.Future[None]"]


class ReportWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_pending: int = 5000,
        flushers: int = 4,
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

    async def write(self, report: StatusReport) -> None:
        """Return once `report` is committed; raise if it could not be."""
        if len(self._pending) >= self._max_pending:
            raise Overloaded(f"{len(self._pending)} reports are waiting to be stored")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((report, done))
        self._wakeup.set()
        await done

    async def close(self) -> None:
        """Store what is pending, then stop the flushers."""
        while self._pending or self._in_flight:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        for flusher in self._flushers:
            flusher.cancel()
        await asyncio.gather(*self._flushers, return_exceptions=True)

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._pending:
                self._wakeup.clear()
                continue
            batch = [
                self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))
            ]
            if not self._pending:
                self._wakeup.clear()
            self._in_flight += 1
            try:
                await self._store(batch)
            finally:
                self._in_flight -= 1

    async def _store(self, batch: list[_Pending]) -> None:
        batch.sort(key=lambda pending: pending[0].sid or "")
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as connection:
                await repository.record_reports(connection, [report for report, _ in batch])
        except Exception as error:
            if len(batch) > 1 and not is_unavailable(error):
                # One report the database refuses must not fail those stored with it.
                for pending in batch:
                    await self._store([pending])
                return
            if not is_unavailable(error):
                log.error("report refused by the database", exc_info=error)
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
            return
        for _, done in batch:
            if not done.done():
                done.set_result(None)
