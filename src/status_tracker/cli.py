"""The `status-tracker` command: serve, migrate, simulator."""

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import uvicorn
from pydantic import ValidationError

from status_tracker import (
    account_commands,
    accounts,
    api_keys,
    erasure,
    logs,
    reconcile,
    repository,
    retention,
)
from status_tracker.database import create_pool, migrate
from status_tracker.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresError
from status_tracker.encryption import SecretBox
from status_tracker.ports import free_port, wait_for_port
from status_tracker.private_files import UnsafePath, ensure_dir
from status_tracker.settings import Settings
from status_tracker.simulator import DEFAULT_ACCOUNT_SID, SimulatorConfig, run_simulator
from status_tracker.twilio_api import TwilioApi

log = logging.getLogger("status_tracker")


class Refused(Exception):
    """What the command cannot do and what to do about it: one line, exit status 1."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise Refused(f"invalid settings: {problems}") from error


def check_database(dsn: str) -> None:
    """Refuse a DATABASE_URL that is not PostgreSQL's, or that does not answer, before anything
    is started: one line, not a driver's traceback."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise Refused(
            f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme or 'one without a'}"
            "://; unset it to use the embedded PostgreSQL."
        )
    try:
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
    except ValueError as error:
        raise Refused(f"DATABASE_URL is not a valid URL: {error}.") from error

    async def connect() -> None:
        connection = await asyncpg.connect(dsn, timeout=10)
        await connection.close()

    try:
        asyncio.run(connect())
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError,
            asyncpg.InterfaceError) as error:  # fmt: skip
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if parts.password:
            reason = reason.replace(parts.password, "***")
        raise Refused(
            f"cannot connect to the database at {where}: {reason}. Check DATABASE_URL and "
            "that PostgreSQL runs there."
        ) from error


def check_port(host: str, port: int) -> None:
    """Refuse a port something else listens on, before PostgreSQL and the simulator start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as error:
            raise Refused(
                f"cannot listen on {host}:{port}: {error.strerror}; stop what uses it, or "
                "choose another with --port."
            ) from error


def run_migrations(dsn: str, revision: str = "head") -> None:
    try:
        migrate(dsn, revision)
    except Exception as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise Refused(f"migrating the database failed: {first_line}") from error


@contextmanager
def database(settings: Settings) -> Iterator[tuple[str, bool]]:
    """The database URL, and whether it is the embedded one (started here, stopped on exit)."""
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
        check_database(dsn)
        yield dsn, False
        return
    ensure_dir(settings.data_dir)
    cluster = EmbeddedPostgres(settings.data_dir / "postgres")
    dsn = cluster.start()
    try:
        yield dsn, True
    finally:
        cluster.stop()


# The built-in simulator's behaviour when `serve` runs it: realistic, a little unruly.
EMBEDDED_SIMULATOR_OPTIONS = ("--delay-min", "0.3", "--delay-max", "2", "--duplicates", "0.05",
                              "--reorder", "0.1", "--create-timeout", "15")  # fmt: skip
SIMULATOR_FROM = "+15005550006"
SIMULATOR_STATE_FILE = "simulator.json"


@contextmanager
def twilio_or_simulator(settings: Settings) -> Iterator[None]:
    """With no Twilio credentials at all, run the built-in simulator and send through it."""
    if settings.twilio_account_sid or settings.twilio_auth_token or settings.twilio_api_base_url:
        yield
        return
    port = free_port()
    # Kept in the data directory, so that after a restart reconciliation still finds at the
    # simulator the messages sent through it (instead of reporting them `not_at_twilio`).
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = settings.data_dir.resolve() / SIMULATOR_STATE_FILE
    credentials = {
        "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": secrets.token_hex(16),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "status_tracker.cli", "simulator", "--port", str(port),
         "--parent-pid", str(os.getpid()), "--state", str(state),
         *EMBEDDED_SIMULATOR_OPTIONS],
        env={**os.environ, **credentials},
    )  # fmt: skip
    try:
        try:
            wait_for_port(port, alive=lambda: process.poll() is None)
        except (RuntimeError, TimeoutError) as error:
            raise SystemExit(f"status-tracker: the simulator did not start: {error}") from error
        os.environ.update(credentials)
        os.environ["TWILIO_API_BASE_URL"] = f"http://127.0.0.1:{port}"
        os.environ["STATUS_TRACKER_SIMULATOR"] = "true"
        if not (settings.twilio_from or settings.twilio_messaging_service_sid):
            os.environ["TWILIO_FROM"] = SIMULATOR_FROM
        print(
            "\nSIMULATOR MODE: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set, so messages "
            f"go to the built-in Twilio simulator (http://127.0.0.1:{port}), which sends real "
            "signed status callbacks. The To number's last four digits choose the outcome "
            "(see README). Set both to send through Twilio.\n",
            flush=True,
        )
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> None:
    settings = load_settings()
    # Everything that can be checked is, before PostgreSQL, the simulator or migrations start.
    check_port(args.host, args.port)
    if settings.database_url is None or not settings.api_keys:
        ensure_dir(settings.data_dir)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it
    # found installed: this one lets the embedded cluster stop before the process exits.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if "public_url" not in settings.model_fields_set:
        # Twilio (or the simulator) must call back the port this serves on.
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        os.environ["STATUS_TRACKER_PUBLIC_URL"] = f"http://{host}:{args.port}"
    with (
        database(settings) as (dsn, embedded),
        twilio_or_simulator(settings),
        metrics_directory(args.workers),
    ):
        if embedded:
            run_migrations(dsn)
            # Workers read their settings from the environment: hand them the embedded URL.
            os.environ["DATABASE_URL"] = dsn
        if not settings.api_keys:
            key, created = api_keys.load_or_create(settings.data_dir)
            os.environ["STATUS_TRACKER_API_KEYS"] = key
            key_file = settings.data_dir.resolve() / api_keys.KEY_FILE
            if created:
                print(f"\nAPI key (shown once, kept in {key_file}):\n\n    {key}\n", flush=True)
            else:
                log.info(
                    "using the API key kept in the data directory", extra={"file": str(key_file)}
                )
        log.info(
            "serving",
            extra={
                "url": f"http://{args.host}:{args.port}",
                "docs": f"http://{args.host}:{args.port}/docs",
            },
        )
        uvicorn.run(
            "status_tracker.app:app_factory",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=None,
            access_log=settings.access_log,
            # Only the access log reads the client's address; the middleware that takes it from
            # X-Forwarded-For costs every callback a few percent when nothing reads it.
            proxy_headers=settings.access_log,
        )


@contextmanager
def metrics_directory(workers: int) -> Iterator[None]:
    """With several workers, a fresh directory where each writes its metrics and whence /metrics
    sums them (prometheus_client's multiprocess mode), removed on exit. The workers are new
    processes: they read PROMETHEUS_MULTIPROC_DIR when they import prometheus_client. One set by
    the operator is used as it is (and is theirs to empty between runs)."""
    if workers < 2 or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="status-tracker-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def migrate_command(args: argparse.Namespace) -> None:
    with database(load_settings()) as (dsn, _):
        run_migrations(dsn, args.revision)
    log.info("database migrated", extra={"revision": args.revision})


def archive_command(args: argparse.Namespace) -> None:
    settings = load_settings()
    with database(settings) as (dsn, embedded):
        if embedded:
            run_migrations(dsn)
        partitions = asyncio.run(_archive(settings, dsn, args.list))
    print(f"{'partition':26} {'from':10} {'until':10} {'events':>10}  state")
    for partition in partitions:
        since = partition["since"].date().isoformat() if partition["since"] else "start"
        state = f"dropped {partition['dropped_at']:%Y-%m-%d}" if partition["dropped_at"] else "kept"
        if partition["archive"]:
            state += f", archived to {partition['archive']} (sha256 {partition['archive_sha256']})"
        events = "" if partition["events"] is None else f"{partition['events']:,}"
        print(f"{partition['name']:26} {since:10} {partition['until'].date().isoformat():10} "
              f"{events:>10}  {state}")  # fmt: skip


async def _archive(settings: Settings, dsn: str, list_only: bool) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        if not list_only:
            if settings.retention is None:
                raise SystemExit(
                    "status-tracker: set STATUS_TRACKER_RETENTION to archive and drop."
                )
            await retention.maintain(connection, settings)
        return await repository.event_partitions(connection)
    finally:
        await connection.close()


def restore_command(args: argparse.Namespace) -> None:
    settings = load_settings()
    with database(settings) as (dsn, embedded):
        if embedded:
            run_migrations(dsn)
        added = asyncio.run(_restore(dsn, args.file))
    for table, count in added.items():
        print(f"restored {count:,} {table} rows from {args.file}")


async def _restore(dsn: str, path: Path) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        return await retention.restore(connection, path)
    except retention.ArchiveMismatch as error:
        raise SystemExit(f"status-tracker: {error}") from None
    finally:
        await connection.close()


def reconcile_command(args: argparse.Namespace) -> None:
    settings = load_settings()
    if args.account is None and not (settings.twilio_account_sid and settings.twilio_auth_token):
        raise SystemExit(
            "status-tracker: reconcile needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN "
            "(and TWILIO_API_BASE_URL to reconcile against a simulator)."
        )
    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(days=1)
    if since.tzinfo is None or until.tzinfo is None:
        raise SystemExit("status-tracker: give --since and --until with a time zone (…Z).")
    if args.resume and (args.since or args.until or args.dry_run):
        raise SystemExit("status-tracker: --resume takes the stopped pass's window, alone.")
    with database(settings) as (dsn, embedded):
        if embedded:
            run_migrations(dsn)
        report = asyncio.run(
            _reconcile(
                settings, dsn, since, until, args.dry_run, resume=args.resume, account=args.account
            )
        )
        since, until = report.since, report.until
    print(f"reconciliation {report.reconciliation_id}: {report.state} in "
          f"{report.duration_seconds:.1f} s, window {since.isoformat()} .. {until.isoformat()}"
          f"{' (dry run: nothing applied)' if report.dry_run else ''}")  # fmt: skip
    for kind, count in sorted(report.counts.items()):
        print(f"  {kind:25} {count}")
    for discrepancy in report.unresolved:
        print(f"  unresolved {discrepancy.kind}: message {discrepancy.message_id} "
              f"{discrepancy.sid or ''} {discrepancy.detail.get('explanation', '')}")  # fmt: skip
    for error in report.errors:
        print(f"  error: {error}", file=sys.stderr)
    # Errors mean some messages went unchecked this time: worth an alert from cron.
    if report.state != "finished" or report.errors:
        raise SystemExit(1)


async def _reconcile(
    settings: Settings,
    dsn: str,
    since: datetime,
    until: datetime,
    dry_run: bool,
    *,
    resume: bool = False,
    account: str | None = None,
) -> reconcile.PassReport:
    pool = await create_pool(settings, dsn)
    if account is None:
        twilio = TwilioApi.from_settings(settings)
        assert twilio is not None, "checked by the caller"
    else:
        stored = await accounts.load(pool, account, SecretBox.from_settings(settings))
        if stored is None:
            await pool.close()
            raise SystemExit(f"status-tracker: no account {account}: add it first.")
        twilio = accounts.twilio_api(stored, settings)
    try:
        if resume:
            stopped = await reconcile.resumable_window(pool, account)
            if stopped is None:
                raise SystemExit("status-tracker: the last pass did not stop mid-listing.")
            since, until = stopped
        return await reconcile.run_pass(
            pool, twilio, settings, since=since, until=until, dry_run=dry_run, account_sid=account,
            progress=lambda phase, count: print(f"  {phase}: {count}", file=sys.stderr),
        )  # fmt: skip
    except reconcile.PassRunning as running:
        raise SystemExit(f"status-tracker: {running}; try again later.") from running
    finally:
        await twilio.close()
        await pool.close()


def erase_number_command(args: argparse.Namespace) -> None:
    settings = load_settings()
    try:
        erasure.parse(args.number)
    except erasure.InvalidNumber as error:
        raise Refused(str(error)) from error
    with database(settings) as (dsn, embedded):
        if embedded:
            run_migrations(dsn)
        record = asyncio.run(_erase_number(settings, dsn, args.number))
    print(f"erasure {record['id']}: number sha256 {record['number_sha256']}")
    for table, count in sorted(record["counts"].items()):
        print(f"  {table:25} {count}")


async def _erase_number(settings: Settings, dsn: str, number: str) -> asyncpg.Record:
    pool = await create_pool(settings, dsn)
    try:
        async with pool.acquire() as connection:
            return await erasure.erase(connection, number, erased_by=None)
    finally:
        await pool.close()


def exit_with_parent(parent_pid: int) -> None:
    """End this process (as SIGTERM does) once `parent_pid` is no longer its parent: `serve`
    killed with SIGKILL cannot stop its simulator, so the simulator watches for it."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def simulator_command(args: argparse.Namespace) -> None:
    config = SimulatorConfig(
        account_sid=os.environ.get("TWILIO_ACCOUNT_SID") or DEFAULT_ACCOUNT_SID,
        seed=args.seed,
        callback_delay_min=args.delay_min,
        callback_delay_max=args.delay_max,
        duplicate_probability=args.duplicates,
        reorder_probability=args.reorder,
        loss_probability=args.loss,
        create_timeout_seconds=args.create_timeout,
        time_scale=args.time_scale,
        get_429_probability=args.get_429,
        get_5xx_probability=args.get_5xx,
        state_file=args.state,
        event_streams_url=args.event_streams,
        status_callbacks=args.status_callbacks,
    )
    if token := os.environ.get("TWILIO_AUTH_TOKEN"):
        config.auth_token = token
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid)
    log.info(
        "simulator listening",
        extra={"url": f"http://{args.host}:{args.port}", "account_sid": config.account_sid},
    )
    run_simulator(args.host, args.port, config)


def _time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from error
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone, e.g. {value}Z")
    return moment


def parser() -> argparse.ArgumentParser:
    """The command line; every option says what it does, its default and its format."""
    main_parser = argparse.ArgumentParser(
        prog="status-tracker",
        description="Track what became of every message sent through Twilio. Settings come "
        "from the environment or ./.env (see README, Configuration).",
    )
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_parser = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the HTTP service. Without DATABASE_URL it starts, migrates and stops "
        "an embedded PostgreSQL; without Twilio credentials it sends through the built-in "
        "simulator.",
    )
    serve_parser.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="IP address to listen on, e.g. 0.0.0.0 for every interface (default: %(default)s)",
    )
    serve_parser.add_argument(
        "--port",
        type=int,
        default=8000,
        metavar="PORT",
        help="TCP port to listen on (default: %(default)s)",
    )
    serve_parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes, each with its own database pool (default: %(default)s)",
    )
    serve_parser.set_defaults(handler=serve)

    migrate_parser = commands.add_parser(
        "migrate", help="bring the database schema up to date (DATABASE_URL, or the embedded one)"
    )
    migrate_parser.add_argument(
        "revision",
        nargs="?",
        default="head",
        metavar="REVISION",
        help="Alembic revision to go to: an id from alembic/versions, "
        "or head (default: %(default)s)",
    )
    migrate_parser.set_defaults(handler=migrate_command)

    reconcile_parser = commands.add_parser(
        "reconcile",
        help="compare the store with Twilio and settle what callbacks never told",
        description="One pass: stale messages are fetched from Twilio; Twilio's messages sent "
        "in the window (default: the last 24 h) are compared with the store.",
    )
    reconcile_parser.add_argument(
        "--since",
        type=_time,
        default=None,
        metavar="TIME",
        help="start of the window, ISO 8601 with a time zone, e.g. "
        "2026-11-24T00:00:00Z (default: 24 h before --until)",
    )
    reconcile_parser.add_argument(
        "--until",
        type=_time,
        default=None,
        metavar="TIME",
        help="end of the window, same format (default: now)",
    )
    reconcile_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="report what differs, apply nothing (default: off, differences are applied)",
    )
    reconcile_parser.add_argument(
        "--resume",
        action="store_true",
        help="take up the last pass where it stopped (Twilio down past the retry budget), "
        "over its window (default: off, a new pass)",
    )
    reconcile_parser.add_argument(
        "--account",
        type=account_commands.account_sid,
        default=None,
        metavar="ACCOUNT_SID",
        help="reconcile this stored account (status-tracker accounts add) with its own "
        "credentials (default: the account of TWILIO_ACCOUNT_SID)",
    )
    reconcile_parser.set_defaults(handler=reconcile_command)

    archive_parser = commands.add_parser(
        "archive",
        help="archive and drop the days of events past STATUS_TRACKER_RETENTION, or list them",
        description="What the service does every hour: days of the event log past "
        "STATUS_TRACKER_RETENTION are written to STATUS_TRACKER_ARCHIVE_DIR (when set), "
        "checked, and dropped with their messages.",
    )
    archive_parser.add_argument(
        "--list",
        action="store_true",
        help="only list the event log's days: kept, archived (file, SHA-256) or dropped "
        "(default: off, archive and drop what is due)",
    )
    archive_parser.set_defaults(handler=archive_command)

    restore_parser = commands.add_parser(
        "restore",
        help="put an archived day of events and its messages back into the store",
        description="Idempotent: rows already in the store are skipped. The file is checked "
        "against the MANIFEST.json beside it first.",
    )
    restore_parser.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="an archive, e.g. message_events_20261205.jsonl.gz (no default: required)",
    )
    restore_parser.set_defaults(handler=restore_command)

    erase_parser = commands.add_parser(
        "erase-number",
        help="erase every stored trace of a phone number (a data subject's request)",
        description="Blanks the number on every channel, as stored plain or redacted, and the "
        "bodies and media of its messages; records the erasure with only a hash of the number. "
        "Opt-outs are kept (hashed). See README, Erasure, for what it cannot reach.",
    )
    erase_parser.add_argument(
        "number",
        metavar="NUMBER",
        help="the number, E.164 (+14155550100) or a channel address (whatsapp:+14155550100); "
        "required, no default",
    )
    erase_parser.set_defaults(handler=erase_number_command)

    simulator_parser = commands.add_parser(
        "simulator",
        help="run a simulator of Twilio's Messages API that sends signed status callbacks",
        description="Credentials: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, else built-in "
        "defaults. Point the SDK at it with client.api.base_url = 'http://HOST:PORT'.",
    )
    option = simulator_parser.add_argument
    option(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="IP address to listen on (default: %(default)s)",
    )
    option(
        "--port",
        type=int,
        default=8100,
        metavar="PORT",
        help="TCP port to listen on (default: %(default)s)",
    )
    option(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="integer seed of every random choice, for reproducible runs "
        "(default: none, different every run)",
    )
    option(
        "--delay-min",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help="shortest time between two statuses of a message (default: %(default)s)",
    )
    option(
        "--delay-max",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="longest time between two statuses of a message (default: %(default)s)",
    )
    option(
        "--duplicates",
        type=float,
        default=0.0,
        metavar="P",
        help="probability, 0 to 1, that a callback is sent twice (default: %(default)s)",
    )
    option(
        "--reorder",
        type=float,
        default=0.0,
        metavar="P",
        help="probability, 0 to 1, that a message's callbacks arrive shuffled "
        "(default: %(default)s)",
    )
    option(
        "--loss",
        type=float,
        default=0.0,
        metavar="P",
        help="probability, 0 to 1, that a callback is never sent (default: %(default)s)",
    )
    option(
        "--create-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a create to a number ending in 0007 hangs before answering "
        "(default: %(default)s)",
    )
    option(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="multiplies every delay, e.g. 0 for none (default: %(default)s)",
    )
    option(
        "--state",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON file the messages are kept in across restarts (default: none, forgotten "
        "on exit; `serve` uses DATA_DIR/simulator.json)",
    )
    option(
        "--parent-pid",
        type=int,
        default=None,
        metavar="PID",
        help="exit when this process is gone; `serve` passes its own (default: none)",
    )
    option(
        "--get-429",
        type=float,
        default=0.0,
        metavar="PROBABILITY",
        help="share of fetches and list pages answered 429, code 20429 (default: %(default)s)",
    )
    option(
        "--get-5xx",
        type=float,
        default=0.0,
        metavar="PROBABILITY",
        help="share of fetches and list pages answered 503, code 20503 (default: %(default)s)",
    )
    option(
        "--event-streams",
        default=None,
        metavar="URL",
        help="also post every message event to this Event Streams webhook sink, in signed "
        "CloudEvents batches (--duplicates and --reorder apply to them too), e.g. "
        "http://127.0.0.1:8000/webhooks/twilio/events (default: none)",
    )
    option(
        "--no-status-callbacks",
        dest="status_callbacks",
        action="store_false",
        help="post no status callbacks: with --event-streams, Event Streams instead of "
        "callbacks (default: callbacks are posted)",
    )
    simulator_parser.set_defaults(handler=simulator_command)
    account_commands.add_commands(commands)
    return main_parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        logs.configure(load_settings().log_level)
        args.handler(args)
    except (Refused, UnsafePath, EmbeddedPostgresError) as error:
        raise SystemExit(f"status-tracker: {error}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
