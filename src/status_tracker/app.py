"""The ASGI application: `create_app(settings)` builds it; nothing is built at import time."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypedDict

import asyncpg
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from status_tracker import errors, logs, metrics, reconcile, retention
from status_tracker.accounts import AccountDirectory
from status_tracker.console import routes as console
from status_tracker.database import create_pool
from status_tracker.delivery import Deliverer
from status_tracker.encryption import SecretBox
from status_tracker.ingest import ReportWriter
from status_tracker.routes import (
    accounts,
    docs,
    event_streams,
    events,
    health,
    inbound,
    keys,
    messages,
    numbers,
    query,
    reconciliations,
    webhook_endpoints,
    webhooks,
)
from status_tracker.routes import metrics as metrics_route
from status_tracker.settings import Settings
from status_tracker.signatures import SignatureVerifier
from status_tracker.twilio_api import TwilioApi

log = logging.getLogger(__name__)


class State(TypedDict):
    settings: Settings
    pool: asyncpg.Pool
    verifier: AccountDirectory
    secret_box: SecretBox
    api_keys: list[str]
    read_keys: list[str]
    writer: ReportWriter
    twilio: TwilioApi | None
    exports: asyncio.Semaphore


class StatusTrackerApp(FastAPI):
    """FastAPI, except that status callbacks go straight to their handler (see
    `webhooks.serve_status_callback`); the route still documents them in the OpenAPI schema."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == webhooks.STATUS_PATH
            and scope["method"] == "POST"
        ):
            await webhooks.serve_status_callback(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. With no settings (as uvicorn's factory), they come from the environment."""
    settings = settings or Settings()
    if settings.database_url is None:
        raise RuntimeError(
            "DATABASE_URL is not set: run `status-tracker serve`, which starts an embedded "
            "PostgreSQL, or set DATABASE_URL."
        )
    dsn = settings.database_url.get_secret_value()
    metrics.enable(settings.metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        shared_key = settings.twilio_webhook_shared_key
        verifier = SignatureVerifier(
            settings.signing_tokens,
            shared_key.get_secret_value() if shared_key else None,
            settings.webhook_shared_keys,
        )
        keys = [key.get_secret_value() for key in settings.api_keys]
        read_keys = [key.get_secret_value() for key in settings.read_keys]
        if not keys and not read_keys:
            log.warning("no API key configured: every /v1 request will be refused (401)")
        # An export's transaction idles while its client reads: let it, up to the stall timeout.
        pool = await create_pool(
            settings,
            dsn,
            idle_in_transaction_seconds=settings.export_stall_timeout_seconds
            + settings.db_timeout_seconds,
        )
        # Status callbacks get connections of their own, which no query or export can take.
        writer_pool = await create_pool(settings, dsn, max_size=settings.ingest_flushers)
        writer = ReportWriter(
            writer_pool,
            max_batch=settings.ingest_max_batch,
            max_pending=settings.ingest_max_pending,
            flushers=settings.ingest_flushers,
            acquire_timeout=settings.db_timeout_seconds,
        )
        box = SecretBox.from_settings(settings)
        directory = AccountDirectory(box, verifier, settings)
        async with pool.acquire() as connection:
            await directory.refresh(connection)
        if not directory.configured:
            log.warning("no TWILIO_AUTH_TOKEN nor account: every webhook will be refused (403)")
        refresher = asyncio.create_task(directory.refresh_periodically(pool))
        twilio = TwilioApi.from_settings(settings)
        if settings.simulator:
            log.warning(
                "SIMULATOR MODE: no Twilio credentials; messages go to the built-in simulator",
                extra={"simulator": settings.twilio_api_base_url},
            )
        # Before the first callback: today's partition of the event log exists, whatever the
        # service's downtime was.
        async with pool.acquire() as connection:
            await retention.ensure_partitions(connection, datetime.now(UTC))
        upkeep = asyncio.create_task(retention.run_periodically(pool, settings))
        schedule = None
        if settings.reconcile_interval_seconds > 0:
            # Stored accounts may come later: the schedule reconciles whichever there are then.
            schedule = asyncio.create_task(
                reconcile.run_periodically(pool, twilio, settings, directory)
            )
        deliverer = Deliverer(pool, settings, busy=writer.busy)
        try:
            yield {
                "settings": settings,
                "pool": pool,
                "verifier": directory,
                "secret_box": box,
                "api_keys": keys,
                "read_keys": read_keys,
                "writer": writer,
                "twilio": twilio,
                # Half the pool at most: stalled exports must leave the API connections.
                "exports": asyncio.Semaphore(max(1, settings.db_pool_max_size // 2)),
            }
        finally:
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)
            await deliverer.close()
            if schedule is not None:
                schedule.cancel()
                await asyncio.gather(schedule, return_exceptions=True)
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await directory.close()
            if twilio is not None:
                await twilio.close()
            # uvicorn has finished the requests in flight; store what they handed over.
            await writer.close()
            await writer_pool.close()
            await pool.close()
            metrics.process_exiting()

    app = StatusTrackerApp(
        title="status-tracker",
        version="0.1.0",
        summary="Durable, order-proof tracking of Twilio message statuses.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    docs.install(app)
    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(inbound.router)
    app.include_router(event_streams.router)
    app.include_router(query.router)
    app.include_router(messages.router)
    app.include_router(reconciliations.router)
    app.include_router(accounts.router)
    app.include_router(keys.router)
    console.install(app)
    app.include_router(numbers.router)
    app.include_router(webhook_endpoints.router)
    app.include_router(events.router)
    app.include_router(metrics_route.router)
    return app


def app_factory() -> FastAPI:
    """What `status-tracker serve` gives uvicorn: settings from the environment, JSON logs."""
    settings = Settings()
    logs.configure(settings.log_level)
    app = create_app(settings)
    # What exists now (modules, the app, its routes and models) lives as long as the process.
    # Frozen, it is left out of the collector's full passes, which otherwise walk all of it: about
    # 50 ms each, every few seconds under load, and the cause of the ingest's p99. Only here,
    # where the process is the service's own, not in create_app, which others may embed.
    gc.collect()
    gc.freeze()
    return app
