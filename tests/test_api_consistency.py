"""One API: timestamps in one format everywhere, unknown filters refused, errors in plain words."""

import csv
import io
import json
import re
from typing import Any

from tests.support import callback_fields, new_sid, signed
from tests.test_inbound import inbound_fields, post_inbound, replying  # noqa: F401 (fixture)

RFC_3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
LOOKS_LIKE_A_TIME = re.compile(r"'?\d{4}-\d{2}-\d{2}[T ]\d{2}:")


def timestamps(value: Any) -> list[str]:
    """Every string in `value` (nested) that looks like a timestamp."""
    if isinstance(value, dict):
        return [found for item in value.values() for found in timestamps(item)]
    if isinstance(value, list):
        return [found for item in value for found in timestamps(item)]
    return [value] if isinstance(value, str) and LOOKS_LIKE_A_TIME.match(value) else []


async def test_timestamps_are_rfc_3339_with_z_in_json_jsonl_and_csv(client):
    sid = new_sid()
    for status in ("sent", "delivered"):
        target, body, headers = signed(callback_fields(sid, status, RawDlrDoneDate="2611241205"))
        assert (await client.post(target, content=body, headers=headers)).status_code == 204
    window = {"since": "2000-01-01T02:00:00+02:00", "until": "2100-01-01T00:00:00Z"}
    message = (await client.get(f"/v1/messages/{sid}")).json()
    stats = (await client.get("/v1/stats", params=window)).json()
    jsonl = [
        json.loads(line)
        for include in ({}, {"include": "events"})
        for line in (
            await client.get("/v1/export", params={**window, **include, "format": "jsonl"})
        ).text.splitlines()
    ]
    cells = [
        cell
        for include in ({}, {"include": "events"})
        for row in csv.reader(
            io.StringIO(
                (await client.get("/v1/export", params={**window, **include})).content.decode(
                    "utf-8-sig"
                )
            )
        )
        for cell in row
    ]
    found = timestamps([message, stats, jsonl, cells])
    assert len(found) > 15
    assert [t for t in found if not RFC_3339_UTC.fullmatch(t)] == []
    assert stats["since"] == "2000-01-01T00:00:00Z"


async def test_unknown_status_filter_is_refused_with_the_known_ones(client):
    response = await client.get("/v1/messages", params={"status": ["delivered", "bogus"]})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert "'bogus'" in detail
    assert all(status in detail for status in ("queued", "delivered", "undelivered", "read"))


async def test_times_without_a_time_zone_are_refused(client):
    for path in ("/v1/messages", "/v1/stats", "/v1/export"):
        response = await client.get(path, params={"since": "2026-12-01T00:00:00"})
        assert response.status_code == 400, path
        assert "with a time zone" in response.json()["detail"], path


async def test_malformed_json_body_says_where_and_what(client):
    body = b'{"to": "+14155550100",\n  "body" "hello"}'
    response = await client.post(
        "/v1/messages", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"] == [
        {
            "field": "body",
            "message": "The body is not valid JSON: Expecting ':' delimiter at line 2, column 10.",
        }
    ]


async def test_send_events_store_from_and_a_local_opt_out_is_not_blamed_on_twilio(replying, db):  # noqa: F811
    sent = await replying.post("/v1/messages", json={"to": "+14155550100", "body": "hi"})
    assert sent.status_code == 201, sent.text
    request = sent.json()["events"][0]["fields"]["request"]
    assert request["from"] == "+15005550006"
    assert "from_" not in request

    number = "+14155550123"
    await post_inbound(replying, inbound_fields(new_sid(), "STOP", sender=number))
    refused = await replying.post("/v1/messages", json={"to": number, "body": "promo"})
    problem = refused.json()
    assert (refused.status_code, problem["twilio_code"]) == (400, 21610)
    assert "Twilio" not in problem["title"]
    assert "Twilio refused" not in problem["detail"]
    assert "STOP" in problem["detail"]
