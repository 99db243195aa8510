"""Logs: no full phone numbers however they are written, and no flood of identical warnings."""

import json
import logging
import time
from pathlib import Path

import httpx

from status_tracker.logs import JsonFormatter
from status_tracker.ports import free_port
from tests.conftest import Server
from tests.support import API_KEY, AUTH_TOKEN, callback_fields, new_sid, signed


def log_lines(server: Server) -> list[dict]:
    return [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]


def wait_alive(server: Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(server.log.read_text())


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


def test_identical_warnings_during_an_outage_are_rate_limited_with_a_count(tmp_path: Path):
    # A database nobody listens on: every callback is a 503 and a "database unavailable" warning.
    environment = {
        "DATABASE_URL": f"postgresql://nobody:x@127.0.0.1:{free_port()}/none",
        "DB_POOL_MIN_SIZE": "0",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
    }
    server = Server(environment, tmp_path)
    try:
        wait_alive(server)
        with httpx.Client(base_url=server.url) as client:
            for _ in range(200):
                target, body, headers = signed(
                    callback_fields(new_sid(), "sent"), public_url=server.url
                )
                assert client.post(target, content=body, headers=headers).status_code == 503
            time.sleep(10.5)  # past the quiet spell: the next line says how many were left out
            target, body, headers = signed(
                callback_fields(new_sid(), "sent"), public_url=server.url
            )
            assert client.post(target, content=body, headers=headers).status_code == 503
        assert server.stop()[0] == 0
    finally:
        server.__exit__()
    warnings = [line for line in log_lines(server) if line["message"] == "database unavailable"]
    assert len(warnings) == 2, warnings
    assert "repeated" not in warnings[0]
    assert warnings[1]["repeated"] == 199
