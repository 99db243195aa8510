"""GET /metrics: counters that match a replay of known callbacks, bounded labels, a token, and
one consistent total across workers. Metrics are process-wide, so each test compares a scrape
taken before with one taken after."""

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from status_tracker import metrics, repository
from status_tracker.callbacks import StatusReport
from status_tracker.database import create_pool
from status_tracker.reconcile import run_pass
from status_tracker.settings import Settings
from status_tracker.twilio_api import TwilioApi
from tests.conftest import Server, Simulator, app_client
from tests.support import ACCOUNT_SID, API_KEY, AUTH_TOKEN, callback_fields, new_sid, signed

Samples = Counter[tuple[str, frozenset[tuple[str, str]]]]
FINAL = "status_tracker_message_final_total"
CALLBACKS = "status_tracker_callbacks_received_total"


def samples(text: str) -> Samples:
    found: Samples = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] += sample.value
    return found


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much the samples of `name` that carry `labels` (and any others) grew."""
    wanted = set(labels.items())

    def total(found: Samples) -> float:
        return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)

    return total(after) - total(before)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def post(client: httpx.AsyncClient, fields: dict[str, str]) -> int:
    target, body, headers = signed(fields)
    return (await client.post(target, content=body, headers=headers)).status_code


async def test_a_replay_of_known_callbacks_is_counted_as_sent(client: httpx.AsyncClient):
    sender = "+15005550101"
    us, uk = new_sid(), new_sid()
    before = await scrape(client)
    replay = [
        callback_fields(us, "sent", From=sender),
        callback_fields(us, "delivered", From=sender, RawDlrDoneDate="2611241130"),
        callback_fields(us, "delivered", From=sender, RawDlrDoneDate="2611241130"),
        callback_fields(uk, "undelivered", From=sender, To="+447700900123", ErrorCode="30007"),
        callback_fields(uk, "sent", From=sender, To="+447700900123"),
    ]
    for fields in replay:
        assert await post(client, fields) == 204
    unsigned = await client.post("/webhooks/twilio/status", data=callback_fields(us, "read"))
    assert unsigned.status_code == 403
    assert await post(client, {"MessageSid": us}) == 400
    after = await scrape(client)

    assert delta(before, after, CALLBACKS, outcome="stored", status="sent") == 1
    assert delta(before, after, CALLBACKS, outcome="stored", status="delivered") == 1
    assert delta(before, after, CALLBACKS, outcome="stored", status="undelivered") == 1
    # A repeated `delivered`, and a `sent` that the stored `undelivered` outranks.
    assert delta(before, after, CALLBACKS, outcome="duplicate", status="delivered") == 1
    assert delta(before, after, CALLBACKS, outcome="duplicate", status="sent") == 1
    assert delta(before, after, CALLBACKS, outcome="bad_signature") == 1
    assert delta(before, after, CALLBACKS, outcome="bad_request") == 1
    assert delta(before, after, CALLBACKS) == len(replay) + 2

    assert delta(before, after, FINAL, sender=sender) == 2
    assert (
        delta(before, after, FINAL, status="delivered", error_code="none", country="US",
              sender=sender) == 1
    )  # fmt: skip
    assert (
        delta(before, after, FINAL, status="undelivered", error_code="30007", country="GB",
              sender=sender) == 1
    )  # fmt: skip
    time_to_final = "status_tracker_message_time_to_final_seconds_count"
    assert delta(before, after, time_to_final, status="delivered") == 1
    assert delta(before, after, time_to_final, status="undelivered") == 1
    # Both `delivered` callbacks carried RawDlrDoneDate (the repeat was received, and lagged).
    assert delta(before, after, "status_tracker_callback_lag_seconds_count") == 2
    assert delta(before, after, "status_tracker_ingest_batch_size_count") >= 1
    assert delta(before, after, "status_tracker_ingest_batch_size_sum") == len(replay)
    assert delta(before, after, "status_tracker_ingest_commit_duration_seconds_count") >= 1


def report(sid: str, status: str, code: int | None = None) -> StatusReport:
    return StatusReport(
        sid=sid, status=status, error_code=code, received_at=datetime.now(UTC),
        source="callback", to="+33612345678", from_="+15005550102",
    )  # fmt: skip


async def test_a_message_is_counted_final_once_whatever_the_order_and_repeats(
    db: asyncpg.Connection,
):
    rng = random.Random(17)
    lifecycle = [("sent", None), ("delivered", None), ("undelivered", 30003), ("read", None)]
    messages = 20
    reports = []
    for _ in range(messages):
        sid = new_sid()
        reports.extend(report(sid, status, code) for status, code in lifecycle * 2)
    rng.shuffle(reports)
    before = samples(metrics.exposition().decode())
    for each in reports:  # one statement each: every report meets the row its forerunners left
        await repository.record_reports(db, [each])
    after = samples(metrics.exposition().decode())
    assert delta(before, after, FINAL, sender="+15005550102") == messages
    assert delta(before, after, FINAL, country="FR", sender="+15005550102") == messages


def test_a_batch_observed_at_once_reads_as_each_value_observed_alone():
    # metrics._observe_all reaches into prometheus_client: a change there must show here.
    values = [0.0, 0.5, 1.0, 1.5, 5.0, 7.25, 86400.0, 1e9, 30.0, 30.0]
    exposed = []
    for observe_all in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram(
            "lag_seconds", "Lag.", ["kind"], registry=registry, buckets=(1, 5, 30)
        )
        child = histogram.labels("a")
        if observe_all:
            metrics._observe_all(child, values)
            metrics._observe_all(child, [])
        else:
            for value in values:
                child.observe(value)
        exposed.append(samples(generate_latest(registry).decode()))
    assert exposed[0] == exposed[1]
    assert exposed[1]["lag_seconds_bucket", frozenset({("kind", "a"), ("le", "5.0")})] == 5
    assert exposed[1]["lag_seconds_sum", frozenset({("kind", "a")})] == sum(values)


async def test_the_country_comes_from_the_number_before_it_is_redacted(settings: Settings):
    redacting = settings.model_copy(update={"redact_numbers": "last4"})
    sender = "+15005550103"
    async with app_client(redacting) as client:
        before = await scrape(client)
        fields = callback_fields(new_sid(), "delivered", From=sender, To="+819012345678")
        assert await post(client, fields) == 204
        response = await client.get("/metrics")
    after = samples(response.text)
    assert delta(before, after, FINAL, country="JP", sender="+1500555****") == 1
    # No label carries a recipient's number, redacted or not.
    assert "819012345678" not in response.text
    assert "+81901234" not in response.text


async def test_labels_stay_bounded_whatever_twilio_sends(client: httpx.AsyncClient):
    before = await scrape(client)
    fields = callback_fields(
        new_sid(), "Vanished_Into_Thin_Air", ErrorCode="99999", To="not a number"
    )
    assert await post(client, fields) == 204
    assert await post(client, callback_fields(new_sid(), "failed", ErrorCode="12345")) == 204
    after = await scrape(client)
    assert delta(before, after, CALLBACKS, outcome="stored", status="unknown") == 1
    assert delta(before, after, FINAL, status="failed", error_code="other", country="US") == 1
    label_values = {value for (_, labels) in after for _, value in labels}
    assert "vanished_into_thin_air" not in label_values
    assert "12345" not in label_values


async def test_metrics_token_is_required_when_set(settings: Settings):
    guarded = settings.model_copy(update={"metrics_token": SecretStr("scrape-me")})
    async with app_client(guarded) as client:
        missing = await client.get("/metrics")  # the API key is not the metrics token
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert "scrape-me" not in missing.text + wrong.text
    assert right.status_code == 200
    assert "status_tracker_callbacks_received_total" in right.text


async def test_metrics_can_be_turned_off(settings: Settings):
    try:
        async with app_client(settings.model_copy(update={"metrics": False})) as client:
            before = samples(metrics.exposition().decode())
            assert await post(client, callback_fields(new_sid(), "delivered")) == 204
            assert (await client.get("/metrics")).status_code == 404
        after = samples(metrics.exposition().decode())
    finally:
        metrics.enable(True)  # the process-wide default, for the tests that follow
    assert delta(before, after, CALLBACKS) == 0
    assert delta(before, after, FINAL) == 0


def promtool() -> str:
    # .ci/run installs Debian's `prometheus` package, which has it.
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus"
    return found


async def test_promtool_check_metrics_passes_on_a_scrape(client: httpx.AsyncClient):
    assert await post(client, callback_fields(new_sid(), "delivered")) == 204
    text = (await client.get("/metrics")).text
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def worker_pids(server: Server, count: int) -> list[int]:
    """The pids of uvicorn's workers (not multiprocessing's resource tracker), once `count` of
    them are up."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")

    def workers() -> list[int]:
        pids = [int(pid) for pid in children.read_text().split()]
        return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]

    deadline = time.monotonic() + 30
    while len(pids := workers()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


def multiprocess_directory(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    entry = next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return Path(entry.split(b"=", 1)[1].decode())


def kill_if_alive(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
async def test_two_workers_report_one_consistent_total(database_url: str, tmp_path: Path):
    with contextlib.ExitStack() as stack:
        await two_workers_report_one_consistent_total(database_url, tmp_path, stack)


async def two_workers_report_one_consistent_total(
    database_url: str, tmp_path: Path, stack: contextlib.ExitStack
) -> None:
    environment = {
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
    }
    with Server(environment, tmp_path, "--workers", "2") as server:
        workers = worker_pids(server, 2)
        # Server kills only the master should the test fail: its workers would keep its pipes.
        stack.callback(kill_if_alive, workers)
        assert len(workers) == 2
        directory = multiprocess_directory(workers[0])
        assert directory == multiprocess_directory(workers[1])

        requests = [
            signed(callback_fields(new_sid(), "delivered"), public_url=server.url)
            for _ in range(300)
        ]
        # A connection per request: the kernel hands them to both workers.
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            semaphore = asyncio.Semaphore(16)

            async def send(target: str, body: bytes, headers: dict[str, str]) -> int:
                async with semaphore:
                    headers = {**headers, "Connection": "close"}
                    response = await http.post(target, content=body, headers=headers)
                    return response.status_code

            codes = await asyncio.gather(*(send(*request) for request in requests))
            assert set(codes) == {204}
            # Each worker wrote its own values: the scrape must sum them.
            writers = {path.stem.rsplit("_", 1)[1] for path in directory.glob("counter_*.db")}
            assert {str(pid) for pid in workers} <= writers

            totals = set()
            for _ in range(10):
                response = await http.get("/metrics", headers={"Connection": "close"})
                found = samples(response.text)
                totals.add(delta(Counter(), found, CALLBACKS, outcome="stored"))
                totals.add(delta(Counter(), found, FINAL, status="delivered"))
        assert totals == {len(requests)}
        assert server.stop()[0] == 0
    assert not directory.exists(), "the per-run directory outlives the server"
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


async def test_sends_twilio_calls_and_reconciliation_are_counted(
    settings: Settings, simulator: Simulator, database_url: str
):
    sending = settings.model_copy(
        update={
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_api_base_url": simulator.url,
            "twilio_from": "+15005550006",
            "reconcile_interval_seconds": 0,
        }
    )
    started = datetime.now(UTC) - timedelta(minutes=1)
    before = samples(metrics.exposition().decode())
    async with app_client(sending) as client:
        # Accepted; refused (21211); accepted after two 429s.
        for to, status in [("+14155550100", 201), ("+14155550004", 400), ("+14155550008", 201)]:
            response = await client.post("/v1/messages", json={"to": to, "body": "hi"})
            assert response.status_code == status, response.text
    twilio = TwilioApi.from_settings(sending)
    assert twilio is not None
    pool = await create_pool(sending, database_url)
    try:
        window = {"since": started, "until": datetime.now(UTC) + timedelta(minutes=1)}
        report = await run_pass(pool, twilio, sending, **window)
        await run_pass(pool, twilio, sending, dry_run=True, **window)
    finally:
        await pool.close()
        await twilio.close()
    assert report.state == "finished", report.errors
    after = samples(metrics.exposition().decode())

    sends = "status_tracker_sends_total"
    assert delta(before, after, sends, outcome="accepted", error_code="none") == 2
    assert delta(before, after, sends, outcome="refused", error_code="21211") == 1
    assert delta(before, after, sends) == 3
    calls = "status_tracker_twilio_request_duration_seconds_count"
    assert delta(before, after, calls, operation="create", status="429") == 2
    assert delta(before, after, calls, operation="create", status="2xx") == 2
    assert delta(before, after, calls, operation="create", status="4xx") == 1
    assert delta(before, after, calls, operation="list", status="2xx") >= 2
    # The dry run is not counted.
    passes = "status_tracker_reconciliation_passes_total"
    assert delta(before, after, passes) == 1
    assert delta(before, after, passes, result="finished") == 1
    assert sum(report.counts.values()) > 0
    assert delta(before, after, "status_tracker_reconciliation_discrepancies_total") == sum(
        report.counts.values()
    )
    last = "status_tracker_reconciliation_last_pass_timestamp_seconds"
    assert after[last, frozenset({("result", "finished")})] >= started.timestamp()
