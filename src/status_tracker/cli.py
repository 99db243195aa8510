"""The `status-tracker` command: serve, migrate."""

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from status_tracker import api_keys, logs
from status_tracker.database import migrate
from status_tracker.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresError
from status_tracker.settings import Settings

log = logging.getLogger("status_tracker")


@contextmanager
def database(settings: Settings) -> Iterator[tuple[str, bool]]:
    """The database URL, and whether it is the embedded one (started here, stopped on exit)."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value(), False
        return
    try:
        cluster = EmbeddedPostgres(settings.data_dir / "postgres")
        dsn = cluster.start()
    except EmbeddedPostgresError as error:
        raise SystemExit(f"status-tracker: {error}") from error
    try:
        yield dsn, True
    finally:
        cluster.stop()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> None:
    settings = Settings()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it
    # found installed: this one lets the embedded cluster stop before the process exits.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with database(settings) as (dsn, embedded):
        if embedded:
            migrate(dsn)
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
            proxy_headers=True,
        )


def migrate_command(args: argparse.Namespace) -> None:
    with database(Settings()) as (dsn, _):
        migrate(dsn, args.revision)
    log.info("database migrated", extra={"revision": args.revision})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="status-tracker",
        description="Track what became of every message sent through Twilio.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP service")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--workers", type=int, default=1, help="worker processes")
    serve_parser.set_defaults(handler=serve)

    migrate_parser = commands.add_parser(
        "migrate", help="bring the database schema up to date (DATABASE_URL, or the embedded one)"
    )
    migrate_parser.add_argument("revision", nargs="?", default="head")
    migrate_parser.set_defaults(handler=migrate_command)

    args = parser.parse_args(argv)
    logs.configure(Settings().log_level)
    args.handler(args)


if __name__ == "__main__":
    main(sys.argv[1:])
