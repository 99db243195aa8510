"""Months of data in bounded space: rollups folded, day partitions made ahead, old days archived
and dropped, bodies forgotten.

The event log has one partition a day (UTC). A day past STATUS_TRACKER_RETENTION goes whole:
with STATUS_TRACKER_ARCHIVE_DIR set, it is first written out (its events, and the messages
whose every event it held), read back and checked against the store's counts, and only then
detached (without blocking writers) and dropped; the messages follow in small batches. The
rollups keep counting what is gone. Every worker runs the loop; one at a time does the work
(an advisory lock), so replicas never archive one day twice at once.
"""

import asyncio
import gzip
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from status_tracker import repository
from status_tracker.settings import Settings

log = logging.getLogger(__name__)

FOLD_EVERY_SECONDS = 5.0
MAINTAIN_EVERY_SECONDS = 3600.0
# Day partitions kept ready ahead of the clock: a week of the service being down loses nothing.
DAYS_AHEAD = 7
# Rows deleted or blanked per statement: a small transaction each, however much is due.
BATCH = 5000
# Retention's advisory lock (reconciliation's is another number).
LOCK = 0x5EED_0002
MANIFEST = "MANIFEST.json"
# How long an Event Streams CloudEvent id is remembered (Twilio redelivers for up to 4 hours).
STREAM_IDS_KEPT = timedelta(days=1)


class ArchiveMismatch(Exception):
    """An archive read back does not hold what the store holds: nothing is dropped."""


async def run_periodically(pool: asyncpg.Pool, settings: Settings) -> None:
    """Fold the rollups' deltas every few seconds, and keep partitions and retention every hour
    (first at start). Never raises."""
    next_maintenance = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            await repository.fold_rollup_deltas(pool)
            if loop.time() >= next_maintenance:
                next_maintenance = loop.time() + MAINTAIN_EVERY_SECONDS
                async with pool.acquire() as connection:
                    await maintain(connection, settings)
        except Exception:
            log.exception("rollups or retention could not run; trying again shortly")
        await asyncio.sleep(FOLD_EVERY_SECONDS)


async def maintain(
    connection: asyncpg.Connection, settings: Settings, now: datetime | None = None
) -> None:
    """Partitions ahead, then retention, by one worker at a time (the others skip)."""
    now = now or datetime.now(UTC)
    if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", LOCK):
        return
    try:
        await ensure_partitions(connection, now)
        if settings.retention is not None:
            await drop_past(connection, now - settings.retention, settings.archive_dir)
        # Event Streams' ids are kept to refuse a redelivered batch: Twilio retries for 4 hours.
        while (
            await repository.forget_stream_events(connection, now - STREAM_IDS_KEPT, BATCH) == BATCH
        ):
            pass
        if settings.body_retention is not None:
            before = now - settings.body_retention
            while await repository.blank_bodies(connection, before, BATCH) == BATCH:
                pass
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", LOCK)


def _day(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def ensure_partitions(connection: asyncpg.Connection, now: datetime) -> None:
    """A partition for each day from `now`'s to DAYS_AHEAD days after it, where no partition
    holds that day yet (one dropped is made again)."""
    kept = [p for p in await repository.event_partitions(connection) if p["dropped_at"] is None]
    for ahead in range(DAYS_AHEAD + 1):
        since = _day(now) + timedelta(days=ahead)
        until = since + timedelta(days=1)
        if not any((p["since"] is None or p["since"] < until) and p["until"] > since for p in kept):
            await repository.create_event_partition(
                connection, repository.partition_name(since), since, until
            )


async def drop_past(
    connection: asyncpg.Connection, horizon: datetime, archive_dir: Path | None
) -> list[str]:
    """Archive (when asked) and drop every partition whose events all precede `horizon`, then
    the messages retired with it; the names dropped, oldest first."""
    dropped = []
    for partition in await repository.partitions_ending_by(connection, horizon):
        name, until = partition["name"], partition["until"]
        if archive_dir is not None:
            await archive(connection, name, until, archive_dir)
        await repository.drop_event_partition(connection, name)
        while await repository.delete_retired_messages(connection, until, BATCH) == BATCH:
            pass
        log.info("retention dropped a day of events", extra={"partition": name})
        dropped.append(name)
    return dropped


@dataclass(frozen=True)
class Written:
    path: Path
    sha256: str
    rows: dict[str, int]


async def archive(
    connection: asyncpg.Connection, name: str, until: datetime, archive_dir: Path
) -> Written:
    """Write the partition and its retired messages to `archive_dir/name.jsonl.gz`, read it
    back, and check it against the store. Raises ArchiveMismatch (or the I/O error) otherwise:
    the caller then drops nothing."""
    await asyncio.to_thread(archive_dir.mkdir, parents=True, exist_ok=True)
    path = archive_dir / f"{name}.jsonl.gz"
    partial = path.with_name(path.name + ".partial")
    # One snapshot: the counts checked are those of the rows written.
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        await connection.execute("SET LOCAL TimeZone = 'UTC'")
        events, messages = await repository.count_partition(connection, name, until)
        expected = {"message_events": events, "messages": messages}
        file = await asyncio.to_thread(partial.open, "wb")
        # mtime 0: the same rows give the same bytes, whenever they are written.
        rows = gzip.GzipFile(filename="", mode="wb", fileobj=file, mtime=0)
        try:
            async for chunk in _chunks(repository.archive_lines(connection, name, until)):
                await asyncio.to_thread(rows.write, chunk)
        finally:
            await asyncio.to_thread(rows.close)
            await asyncio.to_thread(file.close)
    await asyncio.to_thread(_sync_and_rename, partial, path)
    written = await asyncio.to_thread(_read_back, path)
    if written.rows != expected:
        raise ArchiveMismatch(f"{path} holds {written.rows}, the store {expected}")
    await repository.record_archive(connection, name, events, str(path), written.sha256)
    await asyncio.to_thread(_add_to_manifest, archive_dir, name, until, written)
    log.info("archived a day of events", extra={"partition": name, "rows": written.rows})
    return written


async def _chunks(lines: AsyncIterator[tuple[str, str]]) -> AsyncIterator[bytes]:
    """Lines `{"table": ..., "row": {...}}`, gathered into chunks of about a megabyte."""
    chunk: list[str] = []
    size = 0
    async for table, row in lines:
        line = f'{{"table": "{table}", "row": {row}}}\n'
        chunk.append(line)
        size += len(line)
        if size >= 1 << 20:
            yield "".join(chunk).encode()
            chunk, size = [], 0
    yield "".join(chunk).encode()


def _sync_and_rename(partial: Path, path: Path) -> None:
    with partial.open("rb") as file:
        os.fsync(file.fileno())
    partial.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_back(path: Path) -> Written:
    """The archive's SHA-256 and rows per table, from the file itself."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    rows: dict[str, int] = {"message_events": 0, "messages": 0}
    for table, _ in archived_rows(path):
        rows[table] += 1
    return Written(path, digest.hexdigest(), rows)


def archived_rows(path: Path, table: str | None = None) -> Iterator[tuple[str, str]]:
    """(table, row as JSON) of an archive, in order; of one table if asked."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            entry = json.loads(line)
            if table is None or entry["table"] == table:
                yield entry["table"], json.dumps(entry["row"])


def _add_to_manifest(archive_dir: Path, name: str, until: datetime, written: Written) -> None:
    """MANIFEST.json lists every archive: file, rows per table, SHA-256. Rewritten whole and
    renamed into place, so it is never half-written."""
    manifest = read_manifest(archive_dir)
    manifest[name] = {
        "file": written.path.name,
        "until": until.isoformat(),
        "rows": written.rows,
        "sha256": written.sha256,
        "archived_at": datetime.now(UTC).isoformat(),
    }
    partial = archive_dir / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _sync_and_rename(partial, archive_dir / MANIFEST)


def read_manifest(archive_dir: Path) -> dict[str, Any]:
    path = archive_dir / MANIFEST
    manifest: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return manifest


async def restore(connection: asyncpg.Connection, path: Path) -> dict[str, int]:
    """Put an archive back into the store: its day's partition again, its messages, then its
    events; rows already there are skipped, so restoring twice adds nothing. Rows added per
    table. The file is checked against the manifest beside it first, when there is one."""
    name = path.name.removesuffix(".jsonl.gz")
    entry = read_manifest(path.parent).get(name)
    if entry is not None:
        digest = (await asyncio.to_thread(_read_back, path)).sha256
        if digest != entry["sha256"]:
            raise ArchiveMismatch(f"{path}: SHA-256 {digest}, the manifest says {entry['sha256']}")
    partition = next(
        (p for p in await repository.event_partitions(connection) if p["name"] == name), None
    )
    if partition is None:
        raise ArchiveMismatch(f"{path}: this store never had a partition {name}")
    await repository.create_event_partition(
        connection, name, partition["since"], partition["until"]
    )
    added = {}
    for table in ("messages", "message_events"):  # an event needs its message
        added[table] = 0
        batch: list[str] = []
        for _, row in archived_rows(path, table):
            batch.append(row)
            if len(batch) == BATCH:
                added[table] += await repository.restore_rows(connection, table, batch)
                batch = []
        added[table] += await repository.restore_rows(connection, table, batch)
    return added
