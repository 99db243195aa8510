"""Callback ingest speed: the service against a bare FastAPI app, same load, same machine.

    python bench/ingest.py [--duration 15] [--concurrency 64] [--rate 1000] [--workers 1,2]

For each worker count it starts the baseline (bench/baseline_app.py: reads the form, answers 204,
stores nothing) and the service (`status-tracker serve`, every callback signature-checked and
committed before its 204), and drives each with the same signed callbacks, shuffled, 10 %
duplicated: a closed loop (wrk, fixed concurrency) for throughput and latency, then an open loop
at a fixed rate (latency measured from each request's scheduled time). It prints callbacks/s,
p50/p99, errors, peak RSS of the server processes, the service/baseline ratio, and checks that
every acknowledged callback was stored. Needs `wrk` (Debian: apt-get install wrk). PostgreSQL:
DATABASE_URL, or a throwaway embedded cluster (fsync on unless --no-fsync).
"""

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import httpx
from twilio.request_validator import RequestValidator

from status_tracker.database import migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
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
    public_url: str, messages: int, seed: int = 1, numbers: int = 1
) -> list[tuple[str, str]]:
    """(body, signature) pairs: realistic lifecycles, shuffled, about 10 % sent twice; each
    message to one of `numbers` recipients."""
    rng = random.Random(seed)
    validator = RequestValidator(TOKEN)
    requests = []
    for _ in range(messages):
        sid = "SM" + secrets.token_hex(16)
        to = f"+1415{rng.randrange(numbers) if numbers > 1 else 5550100:07d}"
        for status, code in rng.choice(LIFECYCLES):
            params = {
                "MessageSid": sid,
                "SmsSid": sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "AccountSid": "AC" + "0" * 32,
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


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of a process and all its descendants (uvicorn's workers), summed:
    VmRSS now, or VmHWM, the peak."""
    total_kib, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total_kib += int(re.search(rf"{field}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        pending.extend(int(child) for child in children)
    return total_kib / 1024


def closed_loop_with_memory(
    url: str, script: Path, duration: int, concurrency: int, pid: int
) -> dict[str, float]:
    """`closed_loop`, noting the servers' RSS once a quarter of the load is done and at its end:
    under sustained load the two should match (memory stays flat)."""
    quarter: list[float] = []
    timer = threading.Timer(duration / 4, lambda: quarter.append(rss_mib(pid)))
    timer.start()
    try:
        result = closed_loop(url, script, duration, concurrency)
    finally:
        timer.cancel()
    end = rss_mib(pid)
    return {**result, "rss_quarter_mib": round(quarter[0], 1), "rss_end_mib": round(end, 1)}


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


def run(args: argparse.Namespace, dsn: str, directory: Path) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for workers in args.workers:
        for name in ("baseline", "service"):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            requests = signed_requests(url, args.messages)
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
            try:
                closed = closed_loop_with_memory(
                    url, script, args.duration, args.concurrency, server.pid
                )
                opened = asyncio.run(open_loop(url, requests, args.rate, args.duration))
                rss = rss_mib(server.pid, "VmHWM")
            finally:
                stop_server(server)
            result: dict[str, object] = {
                "server": name,
                "workers": workers,
                **closed,
                "open_loop": opened,
                "peak_rss_mib": round(rss, 1),
            }
            if name == "service":
                stored = asyncio.run(stored_events(dsn)) - before
                acknowledged = closed["acknowledged"] + opened["acknowledged"]
                # wrk does not count requests still in flight when it stops, which may be stored.
                result["stored"], result["acknowledged_total"] = stored, acknowledged
                result["nothing_lost"] = stored >= acknowledged
            results.append(result)
    return results


def report(results: list[dict[str, object]]) -> None:
    print(
        f"{'server':9} {'workers':>7} {'cb/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'rate':>5} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} {'ratio':>6}"
    )
    baseline: dict[object, float] = {}
    for r in results:
        o = r["open_loop"]
        assert isinstance(o, dict)
        ratio = ""
        if r["server"] == "baseline":
            baseline[r["workers"]] = float(r["per_second"])  # type: ignore[arg-type]
        else:
            ratio = f"{float(r['per_second']) / baseline[r['workers']]:.2f}"  # type: ignore[arg-type]
        print(
            f"{r['server']:9} {r['workers']:>7} {r['per_second']:>9.0f} {r['p50_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['errors']:>6} {o['rate']:>5} {o['p50_ms']:>7.1f} "
            f"{o['p99_ms']:>7.1f} {r['peak_rss_mib']:>8} {ratio:>6}"
        )
    for r in results:
        if r["server"] == "service":
            print(
                f"service, {r['workers']} worker(s): {r['acknowledged_total']} callbacks "
                f"acknowledged, {r['stored']} stored: "
                f"{'nothing lost' if r['nothing_lost'] else 'LOST CALLBACKS'}; RSS "
                f"{r['rss_quarter_mib']} MiB a quarter into the closed loop, {r['rss_end_mib']} "
                "MiB at its end"
            )
    print("(columns 3-6: closed loop with wrk; 7-9: open loop at a fixed rate)")


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
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/ingest.py needs wrk: apt-get install wrk")
    directory = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    directory.chmod(0o755)
    cluster = None
    try:
        dsn = os.environ.get("DATABASE_URL")
        if dsn is None:
            options = {"fsync": "off"} if args.no_fsync else {}
            cluster = EmbeddedPostgres(directory / "postgres", server_options=options)
            dsn = cluster.start()
        migrate(dsn)
        results = run(args, dsn, directory)
        print(json.dumps(results, indent=2) if args.json else "", end="")
        report(results)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
