"""Callback ingest speed: the service against a bare FastAPI app, same load, same machine.

    python bench/ingest.py [--duration 15] [--concurrency 64] [--rate 1000] [--workers 1,2]
                           [--accounts 25000] [--metrics on|off|both]
    python bench/ingest.py --event-streams [--duration 15] [--stream-concurrency 4]

For each worker count it starts the baseline (bench/baseline_app.py: reads the form, answers 204,
stores nothing) and the service (`status-tracker serve`, every callback signature-checked and
committed before its 204), and drives each with the same signed callbacks, shuffled, 10 %
duplicated: a closed loop (wrk, fixed concurrency) for throughput and latency, then an open loop
at a fixed rate (latency measured from each request's scheduled time). It prints callbacks/s,
p50/p99, errors, peak RSS of the server processes, the service/baseline ratio, and checks that
every acknowledged callback was stored. `--metrics both` runs the service a second time, right
after the first, with STATUS_TRACKER_METRICS=false (`no-metrics`), and prints what metrics cost.
Needs `wrk` (Debian: apt-get install wrk). PostgreSQL:
DATABASE_URL, or a throwaway embedded cluster (fsync on unless --no-fsync).

With --accounts N, N Twilio accounts are stored (tokens encrypted, as `POST /v1/accounts` does)
and each message belongs to one of them, its callbacks signed with that account's own token: the
signature is then checked with the tokens the callback's AccountSid picks among N.

With --webhook-endpoint the service runs a second time with one webhook endpoint attached (a
local receiver answering 200 to every delivery): the `webhooks` row's ratio is against the
service's run without it.
"""

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import httpx
from cryptography.fernet import Fernet
from twilio.request_validator import RequestValidator

from status_tracker.database import migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.encryption import SecretBox
from status_tracker.ports import free_port

TOKEN = "bench-auth-token"
PATH = "/webhooks/twilio/status"
INGEST_SETTINGS = "STATUS_TRACKER_INGEST_"
REPO = Path(__file__).resolve().parents[1]
LIFECYCLES = [
    [("sent", None), ("delivered", None)],
    [("sent", None), ("undelivered", "30003")],
    [("failed", "30007")],
    [("queued", None), ("sent", None), ("delivered", None), ("read", None)],
]


def signed_requests(
    public_url: str,
    messages: int,
    seed: int = 1,
    numbers: int = 1,
    accounts: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """(body, signature) pairs: realistic lifecycles, shuffled, about 10 % sent twice; each
    message to one of `numbers` recipients, and of one of `accounts` (SID, token) if given."""
    rng = random.Random(seed)
    accounts = accounts or [("AC" + "0" * 32, TOKEN)]
    validators: dict[str, RequestValidator] = {}
    requests = []
    for _ in range(messages):
        sid = "SM" + secrets.token_hex(16)
        to = f"+1415{rng.randrange(numbers) if numbers > 1 else 5550100:07d}"
        account_sid, token = rng.choice(accounts)
        validator = validators.setdefault(token, RequestValidator(token))
        for status, code in rng.choice(LIFECYCLES):
            params = {
                "MessageSid": sid,
                "SmsSid": sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "AccountSid": account_sid,
                "From": "+15005550006",
                "To": to,
                "ApiVersion": "2010-04-01",
            }
            if code:
                params["ErrorCode"] = code
            if status in ("delivered", "undelivered"):
                params["RawDlrDoneDate"] = "2611241130"
            request = (urlencode(params), validator.compute_signature(public_url + PATH, params))
            requests.extend([request] * (2 if rng.random() < 0.1 else 1))
    rng.shuffle(requests)
    return requests


def wrk_script(requests: list[tuple[str, str]], directory: Path) -> Path:
    """A wrk script that cycles through `requests`, read from a file beside it (a Lua chunk
    holds at most 65,536 constants, so they cannot be written into the script itself)."""
    data = directory / "callbacks.tsv"
    data.write_text("".join(f"{body}\t{signature}\n" for body, signature in requests))
    script = directory / "callbacks.lua"
    script.write_text(
        "local requests = {}\n"
        f"for line in io.lines({json.dumps(str(data))}) do\n"
        '  local body, signature = line:match("([^\\t]*)\\t(.*)")\n'
        "  requests[#requests + 1] = {body, signature}\n"
        "end\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = (i % #requests) + 1\n"
        f'  return wrk.format("POST", "{PATH}", {{["Content-Type"] = '
        '"application/x-www-form-urlencoded", ["X-Twilio-Signature"] = '
        "requests[i][2]}, requests[i][1])\n"
        "end\n"
    )
    return script


def closed_loop(url: str, script: Path, duration: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        match = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    per_second = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {
        "per_second": per_second,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "errors": errors,
        "acknowledged": total - errors,
    }


async def open_loop(
    url: str, requests: list[tuple[str, str]], rate: int, duration: int, connections: int = 64
) -> dict[str, float]:
    """Requests at fixed times over keep-alive connections (a raw HTTP/1.1 client: httpx would
    be the bottleneck); latency from the scheduled time, so a stall is not hidden."""
    host, port = url.removeprefix("http://").split(":")
    total = rate * duration
    latencies: list[float] = []
    failures = 0
    next_index = 0
    start = time.perf_counter() + 0.5

    async def connection() -> None:
        nonlocal next_index, failures
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while next_index < total:
                index, next_index = next_index, next_index + 1
                scheduled = start + index / rate
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
                body, signature = requests[index % len(requests)]
                writer.write(
                    f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
                    f"{body}".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                if length:
                    await reader.readexactly(int(length.group(1)))
                if head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    latencies.append((time.perf_counter() - scheduled) * 1000)
                else:
                    failures += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    latencies.sort()

    def pick(quantile: float) -> float:
        return latencies[min(len(latencies) - 1, int(quantile * len(latencies)))]

    return {
        "rate": rate,
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "max_ms": latencies[-1],
        "errors": failures,
        "acknowledged": len(latencies),
    }


def process_tree(pid: int) -> Iterator[int]:
    """A process and all its descendants (uvicorn's workers), those still alive."""
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        yield current
        pending.extend(int(child) for child in children)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of a process and all its descendants, summed: VmRSS now, or VmHWM, the
    peak."""
    total_kib = 0
    for current in process_tree(pid):
        with contextlib.suppress(FileNotFoundError):
            status = Path(f"/proc/{current}/status").read_text()
            total_kib += int(re.search(rf"{field}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of a process and all its descendants, summed."""
    total_ticks = 0
    for current in process_tree(pid):
        with contextlib.suppress(FileNotFoundError):
            stat = Path(f"/proc/{current}/stat").read_text()
            # Fields after the command (which may hold spaces): utime and stime, 12th and 13th.
            utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
            total_ticks += int(utime) + int(stime)
    return total_ticks / os.sysconf("SC_CLK_TCK")


def closed_loop_with_memory(
    url: str,
    script: Path,
    duration: int,
    concurrency: int,
    pid: int,
    database_pid: int | None = None,
) -> dict[str, float | None]:
    """`closed_loop`, noting the servers' RSS once a quarter of the load is done and at its end
    (under sustained load the two should match: memory stays flat), and the CPU time per callback
    of the servers and of PostgreSQL (its postmaster and backends, when the bench started it):
    steadier than throughput on a machine whose speed varies, and it tells which side a change
    weighs on."""
    quarter: list[float] = []
    timer = threading.Timer(duration / 4, lambda: quarter.append(rss_mib(pid)))
    timer.start()
    cpu_before = cpu_seconds(pid)
    database_before = cpu_seconds(database_pid) if database_pid else 0.0
    try:
        result = closed_loop(url, script, duration, concurrency)
    finally:
        timer.cancel()
    acknowledged = max(result["acknowledged"], 1)
    cpu_us = (cpu_seconds(pid) - cpu_before) / acknowledged * 1e6
    database_us = (
        (cpu_seconds(database_pid) - database_before) / acknowledged * 1e6 if database_pid else None
    )
    end = rss_mib(pid)
    return {
        **result,
        "rss_quarter_mib": round(quarter[0], 1),
        "rss_end_mib": round(end, 1),
        "cpu_us_per_callback": round(cpu_us, 1),
        "database_cpu_us_per_callback": database_us and round(database_us, 1),
    }


class _Accept(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint would

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def start_receiver() -> tuple[str, ThreadingHTTPServer]:
    """A webhook endpoint that accepts every delivery, in a thread of this process."""
    port = free_port()
    receiver = ThreadingHTTPServer(("127.0.0.1", port), _Accept)
    receiver.daemon_threads = True
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/hooks", receiver


async def webhook_counts(dsn: str) -> tuple[int, int, int]:
    """(outbox events, deliveries delivered, notes of stored reports still to derive)."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM webhook_events) AS events, "
            "(SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered') AS delivered, "
            "(SELECT count(*) FROM webhook_pending_reports) AS notes"
        )
        return row["events"], row["delivered"], row["notes"]
    finally:
        await connection.close()


async def drain_seconds(dsn: str, within: float = 600) -> float | None:
    """How long, once the load is over, until every stored report is derived and every event
    delivered (None: not within `within` seconds)."""
    started = time.monotonic()
    connection = await asyncpg.connect(dsn)
    try:
        while time.monotonic() - started < within:
            if not await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM webhook_pending_reports) "
                "OR EXISTS (SELECT 1 FROM webhook_deliveries WHERE state = 'pending')"
            ):
                return round(time.monotonic() - started, 1)
            await asyncio.sleep(0.2)
        return None
    finally:
        await connection.close()


def start_server(
    command: list[str], env: dict[str, str], url: str, ready: str
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + ready, timeout=1).status_code < 500:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError(f"{command} did not start")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


async def stored_events(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM message_events")
        return count
    finally:
        await connection.close()


async def store_accounts(dsn: str, count: int, secret_key: str) -> list[tuple[str, str]]:
    """`count` accounts with random tokens, stored encrypted; their (SID, token) pairs."""
    box = SecretBox([secret_key])
    accounts = [("AC" + secrets.token_hex(16), secrets.token_hex(16)) for _ in range(count)]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DELETE FROM accounts")
        await connection.copy_records_to_table(
            "accounts",
            records=[(sid, box.encrypt(token)) for sid, token in accounts],
            columns=["sid", "auth_token"],
        )
    finally:
        await connection.close()
    return accounts


def run(
    args: argparse.Namespace, dsn: str, directory: Path, database_pid: int | None
) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    secret_key = Fernet.generate_key().decode()
    accounts = asyncio.run(store_accounts(dsn, args.accounts, secret_key)) or None
    services = {"on": ["service"], "off": ["no-metrics"], "both": ["service", "no-metrics"]}
    for workers in args.workers:
        names = ["baseline", *services[args.metrics]]
        if args.webhook_endpoint:
            names.append("webhooks")
        for name in names:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            requests = signed_requests(url, args.messages, accounts=accounts)
            script = wrk_script(requests, directory)
            # The service's settings come from here, but for the ingest knobs, to compare them.
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("TWILIO_", "STATUS_")) or k.startswith(INGEST_SETTINGS)
            }
            if name == "baseline":
                command = [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.baseline_app:app",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ]
                ready = PATH
            else:
                env.update(
                    {
                        "DATABASE_URL": dsn,
                        "TWILIO_AUTH_TOKEN": TOKEN,
                        "STATUS_TRACKER_PUBLIC_URL": url,
                        "STATUS_TRACKER_API_KEYS": "bench",
                        "STATUS_TRACKER_DATA_DIR": str(directory / "data"),
                        "STATUS_TRACKER_LOG_LEVEL": "WARNING",
                        "STATUS_TRACKER_RECONCILE_INTERVAL": "0",
                        "STATUS_TRACKER_SECRET_KEY": secret_key,
                        "STATUS_TRACKER_WEBHOOKS_ALLOW_PRIVATE": "true",
                        "STATUS_TRACKER_METRICS": str(name != "no-metrics").lower(),
                    }
                )
                command = [
                    "status-tracker",
                    "serve",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                ]
                ready = "/readyz"
            before = asyncio.run(stored_events(dsn))
            server = start_server(command, env, url, ready)
            receiver = endpoint = None
            if name == "webhooks":
                receiver_url, receiver = start_receiver()
                endpoint = httpx.post(
                    url + "/v1/webhook-endpoints",
                    json={"url": receiver_url},
                    headers={"Authorization": "Bearer bench"},
                ).json()["id"]
            try:
                closed = closed_loop_with_memory(
                    url, script, args.duration, args.concurrency, server.pid, database_pid
                )
                opened = asyncio.run(open_loop(url, requests, args.rate, args.duration))
                rss = rss_mib(server.pid, "VmHWM")
                if endpoint is not None:
                    events, delivered, notes = asyncio.run(webhook_counts(dsn))
                    drained = asyncio.run(drain_seconds(dsn, args.drain_within))
            finally:
                if endpoint is not None:
                    # Paused, not deleted: its deliveries stay to be counted; the next run has none.
                    httpx.patch(
                        f"{url}/v1/webhook-endpoints/{endpoint}",
                        json={"enabled": False},
                        headers={"Authorization": "Bearer bench"},
                    )
                stop_server(server)
                if receiver is not None:
                    receiver.shutdown()
            result: dict[str, object] = {
                "server": name,
                "workers": workers,
                **closed,
                "open_loop": opened,
                "peak_rss_mib": round(rss, 1),
            }
            if name == "webhooks":
                result.update(
                    outbox_events=events, delivered=delivered, notes=notes, drain_seconds=drained
                )
            if name != "baseline":
                stored = asyncio.run(stored_events(dsn)) - before
                acknowledged = closed["acknowledged"] + opened["acknowledged"]
                # wrk does not count requests still in flight when it stops, which may be stored.
                result["stored"], result["acknowledged_total"] = stored, acknowledged
                result["nothing_lost"] = stored >= acknowledged
            results.append(result)
    return results


EVENTS_PATH = "/webhooks/twilio/events"
EVENT_BATCH = 100


def signed_event_batches(
    public_url: str, messages: int, seed: int = 1
) -> list[tuple[str, str, str]]:
    """(path with bodySHA256, body, signature) of Event Streams batches of EVENT_BATCH
    CloudEvents: the lifecycles of `messages` messages, shuffled across batches; about 10 % of
    the batches are delivered twice (Event Streams' at-least-once redelivery)."""
    rng = random.Random(seed)
    validator = RequestValidator(TOKEN)
    events = []
    for _ in range(messages):
        sid = "SM" + secrets.token_hex(16)
        for status, code in rng.choice(LIFECYCLES):
            kind = "com.twilio.messaging.message." + status
            data: dict[str, object] = {
                "messageSid": sid, "timestamp": "2026-11-24T11:30:00.812Z",
                "accountSid": "AC" + "0" * 32, "eventName": kind, "apiVersion": "2010-04-01",
                "from": "+15005550006", "to": "+14155550100", "messageStatus": status.upper(),
                "numberOfSegments": 1, "mcc": "310", "mnc": "260", "tags": {},
                "body": "Your order has shipped",
                "statusCallBackUrl": public_url + PATH + "?tenant=bench",
            }  # fmt: skip
            if code:
                data["errorCode"] = int(code)
            if status in ("delivered", "undelivered"):
                data["rawDlrDoneDate"] = "2611241130"
            events.append({
                "specversion": "1.0", "type": kind, "id": "EZ" + secrets.token_hex(16),
                "source": f"/2010-04-01/Accounts/{'AC' + '0' * 32}/Messages/{sid}.json",
                "dataschema": "https://events-schemas.twilio.com/Messaging.MessageStatus/8",
                "datacontenttype": "application/json", "data": data,
            })  # fmt: skip
    rng.shuffle(events)
    batches = []
    for start in range(0, len(events), EVENT_BATCH):
        body = json.dumps(events[start : start + EVENT_BATCH])
        digest = hashlib.sha256(body.encode()).hexdigest()
        target = f"{EVENTS_PATH}?bodySHA256={digest}"
        batch = (target, body, validator.compute_signature(public_url + target, {}))
        batches.extend([batch] * (2 if rng.random() < 0.1 else 1))
    return batches


async def post_event_batches(
    url: str, batches: list[tuple[str, str, str]], duration: int, concurrency: int
) -> dict[str, float]:
    """A closed loop of `concurrency` posters, each sending the next batch once its last is
    answered, for `duration` seconds (or until the batches run out)."""
    latencies: list[float] = []
    acknowledged: set[str] = set()
    failures = 0
    next_index = 0
    deadline = time.perf_counter() + duration

    async def poster(client: httpx.AsyncClient) -> None:
        nonlocal next_index, failures
        while next_index < len(batches) and time.perf_counter() < deadline:
            target, body, signature = batches[next_index]
            next_index += 1
            headers = {"Content-Type": "application/json", "X-Twilio-Signature": signature}
            started = time.perf_counter()
            response = await client.post(target, content=body, headers=headers)
            if response.status_code == 200:
                latencies.append((time.perf_counter() - started) * 1000)
                acknowledged.add(body)
            else:
                failures += 1

    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(poster(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pick(quantile: float) -> float:
        return latencies[min(len(latencies) - 1, int(quantile * len(latencies)))]

    return {
        "batches": len(latencies) + failures,
        "batches_per_second": len(latencies) / elapsed,
        "events_per_second": len(latencies) * EVENT_BATCH / elapsed,
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "max_ms": latencies[-1],
        "errors": failures,
        "acknowledged": len(latencies),
        "acknowledged_events": sum(len(json.loads(body)) for body in acknowledged),
    }


def run_event_streams(args: argparse.Namespace, dsn: str, directory: Path) -> dict[str, object]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    batches = signed_event_batches(url, args.messages)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "STATUS_"))}
    env.update({
        "DATABASE_URL": dsn, "TWILIO_AUTH_TOKEN": TOKEN, "STATUS_TRACKER_PUBLIC_URL": url,
        "STATUS_TRACKER_API_KEYS": "bench", "STATUS_TRACKER_DATA_DIR": str(directory / "data"),
        "STATUS_TRACKER_LOG_LEVEL": "WARNING", "STATUS_TRACKER_RECONCILE_INTERVAL": "0",
    })  # fmt: skip
    command = ["status-tracker", "serve", "--port", str(port), "--workers", str(args.workers[0])]
    before = asyncio.run(stored_events(dsn))
    server = start_server(command, env, url, "/readyz")
    try:
        result = asyncio.run(
            post_event_batches(url, batches, args.duration, args.stream_concurrency)
        )
    finally:
        stop_server(server)
    stored = asyncio.run(stored_events(dsn)) - before
    # Every batch was answered before the server stopped: each event acknowledged is stored,
    # once, however often its batch was delivered.
    result["stored_events"] = stored
    result["each_stored_once"] = stored == result["acknowledged_events"]
    return {"server": "service", "workers": args.workers[0], **result}


def report_event_streams(result: dict[str, object]) -> None:
    print(
        f"Event Streams, {result['workers']} worker(s), batches of {EVENT_BATCH}: "
        f"{result['acknowledged']} batches acknowledged ({result['errors']} errors), "
        f"{float(result['batches_per_second']):.1f} batches/s = "  # type: ignore[arg-type]
        f"{float(result['events_per_second']):.0f} events/s; per batch p50 "  # type: ignore[arg-type]
        f"{float(result['p50_ms']):.1f} ms, p99 {float(result['p99_ms']):.1f} ms, "  # type: ignore[arg-type]
        f"max {float(result['max_ms']):.1f} ms; {result['acknowledged_events']} distinct events "  # type: ignore[arg-type]
        f"acknowledged, {result['stored_events']} stored: "
        f"{'each once' if result['each_stored_once'] else 'MISMATCH'}"
    )


def report(results: list[dict[str, object]]) -> None:
    print(
        f"{'server':9} {'workers':>7} {'cb/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'rate':>5} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} {'ratio':>6} {'CPU µs':>7} "
        f"{'DB µs':>7}"
    )
    # The service against the baseline; the service with a webhook endpoint against the service.
    against: dict[tuple[object, object], float] = {}
    for r in results:
        o = r["open_loop"]
        assert isinstance(o, dict)
        ratio = ""
        reference = {"service": "baseline", "webhooks": "service"}.get(str(r["server"]))
        if reference is not None:
            ratio = f"{float(r['per_second']) / against[reference, r['workers']]:.2f}"  # type: ignore[arg-type]
        against[r["server"], r["workers"]] = float(r["per_second"])  # type: ignore[arg-type]
        database_us = r["database_cpu_us_per_callback"]
        print(
            f"{r['server']:9} {r['workers']:>7} {r['per_second']:>9.0f} {r['p50_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['errors']:>6} {o['rate']:>5} {o['p50_ms']:>7.1f} "
            f"{o['p99_ms']:>7.1f} {r['peak_rss_mib']:>8} {ratio:>6} "
            f"{r['cpu_us_per_callback']:>7} {'' if database_us is None else database_us:>7}"
        )
    for r in results:
        if r["server"] == "webhooks":
            drained = r["drain_seconds"]
            print(
                f"webhooks, {r['workers']} worker(s): at the end of the load "
                f"{r['outbox_events']} outbox events, {r['delivered']} delivered, "
                f"{r['notes']} notes of stored reports still to derive; every report derived "
                "and every event delivered "
                + ("not within --drain-within" if drained is None else f"{drained} s after")
            )
        if r["server"] != "baseline":
            print(
                f"{r['server']}, {r['workers']} worker(s): {r['acknowledged_total']} callbacks "
                f"acknowledged, {r['stored']} stored: "
                f"{'nothing lost' if r['nothing_lost'] else 'LOST CALLBACKS'}; RSS "
                f"{r['rss_quarter_mib']} MiB a quarter into the closed loop, {r['rss_end_mib']} "
                "MiB at its end"
            )
    print(
        "(columns 3-6: closed loop with wrk; 7-9: open loop at a fixed rate; CPU µs: the "
        "servers' CPU time per callback acknowledged in the closed loop; DB µs: PostgreSQL's)"
    )
    # What metrics cost (the service against no-metrics) and what a webhook endpoint costs
    # (webhooks against the service): medians when --workers repeats a count.
    for workers in sorted({r["workers"] for r in results}, key=str):
        for what, with_it, without in (
            ("metrics", "service", "no-metrics"),
            ("a webhook endpoint", "webhooks", "service"),
        ):
            pair = [
                [r for r in results if r["workers"] == workers and r["server"] == name]
                for name in (with_it, without)
            ]
            if not all(pair):
                continue

            def median(runs: list[dict[str, object]], key: str) -> float:
                return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]

            on, off = (median(runs, "per_second") for runs in pair)
            print(
                f"{what} cost, {workers} worker(s): {1 - on / off:+.1%} of closed-loop throughput "
                f"(median of {len(pair[0])} run(s): {on:.0f} cb/s with, {off:.0f} without)"
            )
            for side, key in (
                ("the service's", "cpu_us_per_callback"),
                ("PostgreSQL's", "database_cpu_us_per_callback"),
            ):
                if pair[0][0][key] is not None:
                    on, off = (median(runs, key) for runs in pair)
                    print(
                        f"{what} cost, {workers} worker(s): {on:.1f} µs of {side} CPU per "
                        f"callback with, {off:.1f} without ({on / off - 1:+.1%})"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per load")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=1000, help="open-loop callbacks per second")
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 2])
    parser.add_argument("--messages", type=int, default=25_000, help="distinct message SIDs")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument(
        "--drain-within",
        type=float,
        default=600,
        help="with --webhook-endpoint: seconds to wait after the load for every event to be "
        "delivered (0: do not wait)",
    )
    parser.add_argument(
        "--accounts", type=int, default=0, help="stored Twilio accounts the callbacks belong to"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--event-streams",
        action="store_true",
        help="post signed Event Streams batches of 100 CloudEvents instead of callbacks",
    )
    parser.add_argument(
        "--stream-concurrency", type=int, default=4, help="Event Streams batches in flight"
    )
    parser.add_argument(
        "--webhook-endpoint",
        action="store_true",
        help="run the service again with one webhook endpoint attached and receiving",
    )
    parser.add_argument(
        "--metrics",
        choices=["on", "off", "both"],
        default="on",
        help="run the service with metrics (on), without (off), or each in turn (both)",
    )
    args = parser.parse_args()
    if not args.event_streams and shutil.which("wrk") is None:
        raise SystemExit("bench/ingest.py needs wrk: apt-get install wrk")
    with bench_database(args) as (dsn, directory, database_pid):
        if args.event_streams:
            result = run_event_streams(args, dsn, directory)
            print(json.dumps(result, indent=2) if args.json else "", end="")
            report_event_streams(result)
        else:
            results = run(args, dsn, directory, database_pid)
            print(json.dumps(results, indent=2) if args.json else "", end="")
            report(results)


@contextmanager
def bench_database(args: argparse.Namespace) -> Iterator[tuple[str, Path, int | None]]:
    """DATABASE_URL or a throwaway embedded cluster, migrated; a scratch directory; and the
    cluster's postmaster pid (None for DATABASE_URL's server: its CPU time is not ours to read)."""
    directory = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    directory.chmod(0o755)
    cluster = None
    database_pid = None
    try:
        dsn = os.environ.get("DATABASE_URL")
        if dsn is None:
            options = {"fsync": "off"} if args.no_fsync else {}
            cluster = EmbeddedPostgres(directory / "postgres", server_options=options)
            dsn = cluster.start()
            database_pid = int((cluster.cluster / "postmaster.pid").read_text().split()[0])
        migrate(dsn)
        yield dsn, directory, database_pid
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
