"""Connecting to PostgreSQL and bringing its schema up to date."""

import json
from importlib import resources
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from asyncpg.exceptions._base import InternalClientError

from status_tracker.settings import Settings


async def init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def create_pool(
    settings: Settings,
    dsn: str,
    *,
    max_size: int | None = None,
    idle_in_transaction_seconds: float | None = None,
) -> asyncpg.Pool:
    """A pool whose connections PostgreSQL itself limits too: a statement may run, and a
    transaction stay idle, `STATUS_TRACKER_DB_TIMEOUT` seconds (unless told otherwise), so that
    a client that vanished mid-transaction cannot keep a connection (and its locks) for ever."""
    max_size = max_size or settings.db_pool_max_size
    idle = idle_in_transaction_seconds or settings.db_timeout_seconds
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min(settings.db_pool_min_size, max_size),
        max_size=max_size,
        command_timeout=settings.db_timeout_seconds,
        init=init_connection,
        server_settings={
            "statement_timeout": str(round(settings.db_timeout_seconds * 1000)),
            "idle_in_transaction_session_timeout": str(round(idle * 1000)),
        },
    )
    return pool


def _alembic_ini() -> Path:
    # An installed wheel carries its own copy of the migrations; a checkout has them at the top.
    packaged = Path(str(resources.files("status_tracker"))) / "alembic.ini"
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parents[2] / "alembic.ini"


def _alembic_config(dsn: str) -> Config:
    config = Config(str(_alembic_ini()))
    # configparser would read a '%' in the password as interpolation.
    config.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    return config


def migrate(dsn: str, revision: str = "head") -> None:
    """Upgrade the database to `revision`. Blocking: it runs its own event loop."""
    command.upgrade(_alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    command.downgrade(_alembic_config(dsn), revision)


# SQLSTATE classes of a lost or unreachable database: connection exception, insufficient
# resources, operator intervention (shutdown, starting up), and 55000 for "not accepting
# connections". Anything else is a bug, not an outage.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means the database cannot be reached now (answer 503 and retry)."""
    # InternalClientError: asyncpg's state machine broke with the connection under it.
    if isinstance(error, OSError | TimeoutError | asyncpg.InterfaceError | InternalClientError):
        return True
    sqlstate: str = getattr(error, "sqlstate", None) or ""
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASSES) or sqlstate == "55000"


DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    InternalClientError,
    asyncpg.PostgresError,
)
