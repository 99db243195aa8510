"""A real PostgreSQL for the whole run, and a freshly migrated database for every test."""

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from playwright.async_api import Browser, async_playwright
from pydantic import SecretStr

from status_tracker.app import create_app
from status_tracker.database import init_connection, migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.ports import free_port, wait_for_port
from status_tracker.settings import Settings
from tests.support import ACCOUNT_SID, API_KEY, AUTH_TOKEN, PUBLIC_URL

TEMPLATE = "status_tracker_template"
# The `status-tracker` command of the Python running the tests, activated venv or not.
COMMAND = (sys.executable, "-m", "status_tracker.cli")


def world_readable_tempdir(prefix: str) -> Path:
    # As root the server runs as another user, who must be able to reach the directory.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    directory = world_readable_tempdir("status-tracker-tests-")
    # Durability is PostgreSQL's business and is not what these tests check: skip the fsyncs.
    cluster = EmbeddedPostgres(
        directory / "postgres",
        server_options={"fsync": "off", "full_page_writes": "off", "max_connections": "300"},
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(postgres: EmbeddedPostgres) -> str:
    """A database migrated once with the project's own migrations; tests copy it."""

    async def create() -> None:
        connection = await asyncpg.connect(postgres.dsn)
        try:
            await connection.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await connection.close()

    asyncio.run(create())
    url = with_database(postgres.dsn, TEMPLATE)
    migrate(url)
    return url


async def create_database(postgres: EmbeddedPostgres) -> str:
    """A new database, a copy of the migrated template; its URL."""
    name = f"test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(postgres.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    return with_database(postgres.dsn, name)


@asynccontextmanager
async def throwaway_database(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A new database, a copy of the migrated template, dropped afterwards; its URL."""
    url = await create_database(postgres)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(postgres.dsn)
        try:
            await admin.execute(f"DROP DATABASE {urlsplit(url).path[1:]} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def database_url(postgres: EmbeddedPostgres, template_url: str) -> AsyncIterator[str]:
    async with throwaway_database(postgres) as url:
        yield url


# Debian's chromium, driven by Playwright (which downloads no browser here).
CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=SecretStr(database_url),
        data_dir=tmp_path,
        public_url=PUBLIC_URL,
        twilio_auth_token=SecretStr(AUTH_TOKEN),
        api_keys=[SecretStr(API_KEY)],
        webhooks_allow_private=True,
    )


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, called over real HTTP semantics (ASGI transport)."""
    async with LifespanManager(create_app(settings)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://internal:8000",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as http:
            yield http


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as http:
        yield http


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, to check what is stored without going through the API."""
    connection = await asyncpg.connect(database_url)
    await init_connection(connection)
    try:
        yield connection
    finally:
        await connection.close()


class Server:
    """`status-tracker serve` as a real process, as a user would run it."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"server-{self.port}.log"
        self._log_file = self.log.open("wb")
        environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
        environment["STATUS_TRACKER_PUBLIC_URL"] = self.url
        environment.update(env)
        self.process = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(self.port), *args],
            env=environment,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready: {self.log.read_text()}")

    def __enter__(self) -> "Server":
        self.wait_ready()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
        self._log_file.close()

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as a process manager would; (exit code, what it printed on stdout)."""
        self.process.send_signal(signal.SIGTERM)
        stdout, _ = self.process.communicate(timeout=60)
        self._log_file.close()
        return self.process.returncode, stdout


ENV_PREFIXES = ("DATABASE_URL", "STATUS_TRACKER_", "TWILIO_")


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """The service on a real port, on this test's database."""
    environment = {
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
    }
    with Server(environment, tmp_path) as running:
        yield running


class Simulator:
    """`status-tracker simulator` as a real process."""

    def __init__(self, cwd: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_file = (cwd / f"simulator-{self.port}.log").open("wb")
        environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
        environment.update({"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN})
        self.process = subprocess.Popen(
            [*COMMAND, "simulator", "--port", str(self.port), *options],
            env=environment,
            stderr=self._log_file,
        )
        wait_for_port(self.port, alive=lambda: self.process.poll() is None)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._log_file.close()


def sending_environment(database_url: str, directory: Path, twilio_url: str) -> dict[str, str]:
    """Settings of a service that sends through the simulator at `twilio_url`."""
    return {
        "DATABASE_URL": database_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_API_BASE_URL": twilio_url,
        "TWILIO_FROM": "+15005550006",
        "TWILIO_TIMEOUT": "1",
        "STATUS_TRACKER_API_KEYS": API_KEY,
        "STATUS_TRACKER_DATA_DIR": str(directory / "data"),
    }


# Quick, reproducible and unruly: every callback path is exercised within a second or two.
FAST_SIMULATOR = ("--seed", "7", "--delay-min", "0.01", "--delay-max", "0.1",
                  "--create-timeout", "3")  # fmt: skip


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    running = Simulator(tmp_path, *FAST_SIMULATOR)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def sending_server(database_url: str, tmp_path: Path, simulator: Simulator) -> Iterator[Server]:
    """The service on a real port, sending through the simulator on another."""
    with Server(sending_environment(database_url, tmp_path, simulator.url), tmp_path) as running:
        yield running
