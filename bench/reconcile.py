"""How long a reconciliation pass takes over many messages.

    python bench/reconcile.py [--messages 50000]

Creates the messages at the built-in simulator (no callbacks: every one was "lost"), stores them
locally as still `queued`, then times a pass (which must list them all and apply every status)
and a second pass (which must change nothing). Uses a throwaway embedded PostgreSQL unless
DATABASE_URL is set.
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from pydantic import SecretStr

from status_tracker.database import create_pool, migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.ports import free_port, wait_for_port
from status_tracker.reconcile import run_pass
from status_tracker.settings import Settings
from status_tracker.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from status_tracker.twilio_api import TwilioApi

SUFFIXES = ["0100", "0001", "0002", "0005"]


async def create_at_simulator(url: str, count: int) -> list[str]:
    auth = (DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)
    path = f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json"
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=url, auth=auth, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(32)

        async def create(index: int) -> str:
            to = f"+1415555{SUFFIXES[index % len(SUFFIXES)]}"
            async with gate:
                answer = await client.post(
                    path, data={"To": to, "From": "+15005550006", "Body": f"m{index}"}
                )
            sid: str = answer.json()["sid"]
            return sid

        return list(await asyncio.gather(*(create(i) for i in range(count))))


async def seed_locally(dsn: str, sids: list[str]) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            """
            INSERT INTO messages (id, sid, status, status_rank, to_number, from_number, channel)
            SELECT md5(sid)::uuid, sid, 'queued', 30, '+14155550100', '+15005550006', 'sms'
            FROM unnest($1::text[]) AS sid
            """,
            sids,
        )
    finally:
        await connection.close()


async def timed_passes(dsn: str, simulator_url: str) -> None:
    settings = Settings(
        database_url=SecretStr(dsn),
        twilio_account_sid=DEFAULT_ACCOUNT_SID,
        twilio_auth_token=SecretStr(DEFAULT_AUTH_TOKEN),
        twilio_api_base_url=simulator_url,
    )
    pool = await create_pool(settings, dsn)
    twilio = TwilioApi(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, base_url=simulator_url, timeout=60)
    until = datetime.now(UTC) + timedelta(minutes=1)
    since = until - timedelta(hours=1)
    try:
        for label in ("first pass", "second pass"):
            started = time.perf_counter()
            report = await run_pass(pool, twilio, settings, since=since, until=until)
            elapsed = time.perf_counter() - started
            print(f"{label}: {report.state} in {elapsed:.1f} s; {dict(report.counts)}")
    finally:
        await twilio.close()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    directory.chmod(0o755)
    cluster = None
    port = free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "status_tracker.cli", "simulator", "--port", str(port),
         "--loss", "1", "--delay-min", "0", "--delay-max", "0"],
        env={k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")},
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        dsn = os.environ.get("DATABASE_URL")
        if dsn is None:
            cluster = EmbeddedPostgres(directory / "postgres")
            dsn = cluster.start()
        migrate(dsn)
        wait_for_port(port, alive=lambda: simulator.poll() is None)
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        sids = asyncio.run(create_at_simulator(url, args.messages))
        elapsed = time.perf_counter() - started
        print(f"created {len(sids)} messages at the simulator in {elapsed:.1f} s")
        asyncio.run(seed_locally(dsn, sids))
        asyncio.run(timed_passes(dsn, url))
    finally:
        simulator.terminate()
        simulator.wait()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
