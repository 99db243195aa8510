"""Logs: no full phone numbers however they are written, and no flood of identical warnings."""

import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx

from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.logs import JsonFormatter
from tests.conftest import Server
from tests.support import API_KEY, AUTH_TOKEN, callback_fields, new_sid, signed


def log_lines(server: Server) -> list[dict]:
    return [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]


def test_access_log_masks_numbers_escaped_in_the_url(database_url: str, tmp_path: Path):
    environment = {
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
        "STATUS_TRACKER_ACCESS_LOG": "true",
    }
    with Server(environment, tmp_path) as server:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        for query in ("to=%2B14155550199", "to=%2b14155550199", "from=%252B14155550199",
                      "to=whatsapp%3A%2B14155550199"):  # fmt: skip
            response = httpx.get(f"{server.url}/v1/messages?{query}", headers=auth)
            assert response.status_code == 200
        server.stop()
    logged = server.log.read_text()
    assert logged.count("/v1/messages?") == 4, logged
    assert "14155550199" not in logged
    assert "%2B1415555" not in logged.upper()
    assert logged.count("*******0199") == 4


def test_fields_nested_in_a_log_line_are_masked_too():
    record = logging.makeLogRecord(
        {"msg": "stored", "fields": {"To": "+14155550199", "list": ["%2B14155550199"]}}
    )
    line = JsonFormatter().format(record)
    assert "14155550199" not in line
    assert json.loads(line)["fields"]["list"] == ["+*******0199"]


async def test_identical_warnings_during_an_outage_are_rate_limited_with_a_count(
    postgres: EmbeddedPostgres, database_url: str, tmp_path: Path
):
    environment = {
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
    }
    name = urlsplit(database_url).path[1:]
    with Server(environment, tmp_path) as server:
        # An outage: the database refuses connections, and those held are gone.
        admin = await asyncpg.connect(postgres.dsn)
        try:
            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
        finally:
            await admin.close()
        async with httpx.AsyncClient(base_url=server.url) as client:

            async def post() -> int:
                target, body, headers = signed(
                    callback_fields(new_sid(), "sent"), public_url=server.url
                )
                return (await client.post(target, content=body, headers=headers)).status_code

            assert [await post() for _ in range(200)] == [503] * 200
            await asyncio.sleep(
                10.5
            )  # past the quiet spell: the next line says how many were left out
            assert await post() == 503
        assert server.stop()[0] == 0
    warnings = [line for line in log_lines(server) if line["message"] == "database unavailable"]
    # One line per kind of failure (the lost connection, then refused ones), not one per 503.
    assert 2 <= len(warnings) <= 4, warnings
    assert "repeated" not in warnings[0]
    assert warnings[-1]["repeated"] >= 190
