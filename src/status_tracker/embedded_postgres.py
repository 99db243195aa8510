"""A local PostgreSQL cluster the service manages itself, for the one-command start and the tests.

The cluster lives in `<directory>/cluster`, listens on 127.0.0.1 only, and requires a password
that is generated once and kept in `<directory>/password` (mode 0600). PostgreSQL refuses to run
as root, so as root the server runs as an unprivileged OS user that owns the cluster directory.
"""

import asyncio
import glob
import logging
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import asyncpg

from status_tracker.ports import free_port, is_listening

log = logging.getLogger(__name__)

SUPERUSER = "status_tracker"
DATABASE = "status_tracker"
INSTALL_HINT = (
    "No PostgreSQL server binaries found (looked for pg_ctl on PATH and under "
    "/usr/lib/postgresql/*/bin). Install them (Debian/Ubuntu: `apt-get install postgresql`, "
    "macOS: `brew install postgresql`), or set DATABASE_URL to an existing database."
)


class EmbeddedPostgresError(RuntimeError):
    pass


def sized_settings(memory_bytes: int | None = None) -> dict[str, str]:
    """Server settings for a machine of this much memory (default: this one's).

    PostgreSQL's defaults (128 MB of shared buffers, a checkpoint at most every 5 minutes or
    1 GB of WAL) suit a small shared server. With millions of messages the indexes the ingest
    path touches outgrow 128 MB: each callback then evicts and rewrites pages, and after every
    checkpoint the first change to a page writes the whole page to the WAL again. A quarter of
    memory for shared buffers and checkpoints 15 minutes apart keep those pages in memory and
    written once per checkpoint (bench/README.md has the figures). Shared memory is only taken
    as it is used.
    """
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mib = memory_bytes // 2**20
    return {
        "shared_buffers": f"{min(max(mib // 4, 128), 8192)}MB",
        "effective_cache_size": f"{max(mib // 2, 256)}MB",
        "maintenance_work_mem": f"{min(max(mib // 16, 64), 1024)}MB",
        "max_wal_size": "8GB",
        "min_wal_size": "1GB",
        "checkpoint_timeout": "15min",
    }


def find_bin_dir(
    path: str | None = None, pattern: str = "/usr/lib/postgresql/*/bin/pg_ctl"
) -> Path:
    """Where the server binaries are: on PATH (or `path`), else Debian's versioned directories."""
    on_path = shutil.which("pg_ctl", path=path)
    if on_path:
        return Path(on_path).resolve().parent
    candidates = glob.glob(pattern)
    if not candidates:
        raise EmbeddedPostgresError(INSTALL_HINT)
    newest = max(candidates, key=lambda path: int(Path(path).parts[-3].split(".")[0]))
    return Path(newest).parent


def _unprivileged_user() -> str | None:
    """The OS user to run the server as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise EmbeddedPostgresError("Running as root and no unprivileged 'postgres' user exists.")


def wal_compression(bin_dir: Path) -> dict[str, str]:
    """lz4 for the full-page images in the WAL, where the server was built with it: on a full
    store they are most of the WAL a callback writes, and lz4 shrinks them at little CPU."""
    pg_config = bin_dir / "pg_config"
    if not pg_config.exists():
        return {}
    configure = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True)
    return {"wal_compression": "lz4"} if "--with-lz4" in configure.stdout else {}


class EmbeddedPostgres:
    def __init__(self, directory: Path, *, server_options: dict[str, str] | None = None) -> None:
        self.directory = directory.resolve()
        self.cluster = self.directory / "cluster"
        self.password_file = self.directory / "password"
        self.os_user = _unprivileged_user()
        self.bin_dir = find_bin_dir()
        self.server_options = {
            **sized_settings(),
            **wal_compression(self.bin_dir),
            **(server_options or {}),
        }
        self.started_here = False
        self.port: int | None = None

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("The embedded PostgreSQL is not running.")
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> str:
        """Start the cluster (creating it on first use) and return the URL of its database."""
        if not (self.cluster / "PG_VERSION").exists():
            self._initdb()
        running = self._running_port()
        if running is None:
            options = {"port": str(self._port_to_use()), **self.server_options}
            flags = " ".join(f"-c {name}={value}" for name, value in options.items())
            self._run(
                "pg_ctl", "-D", str(self.cluster), "-l", str(self.cluster / "server.log"),
                "-w", "-t", "60", "-o", flags, "start",
            )  # fmt: skip
            self.started_here = True
            running = self._running_port()
            if running is None:
                raise EmbeddedPostgresError(
                    f"PostgreSQL did not start; see {self.cluster / 'server.log'}"
                )
        self.port = running
        asyncio.run(self._ensure_database())
        log.info("embedded postgresql ready", extra={"port": self.port, "dir": str(self.cluster)})
        return self.dsn

    def _port_to_use(self) -> int:
        """The port used last time, if it is free: clients that remember it can reconnect."""
        remembered = self.directory / "port"
        if remembered.exists():
            port = int(remembered.read_text())
            if not is_listening(port):
                return port
        port = free_port()
        remembered.write_text(str(port))
        return port

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster if this object started it; a cluster somebody else runs is left up."""
        if self.started_here and self._running_port() is not None:
            self._run("pg_ctl", "-D", str(self.cluster), "-m", mode, "-w", "stop")
        self.started_here = False

    def _initdb(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(24))
        self.cluster.mkdir(mode=0o700, exist_ok=True)
        # initdb reads the password from a file the server's user can read: a copy, removed after.
        pwfile = self.directory / "initdb-password"
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password_file.read_text())
        if self.os_user is not None:
            owner = pwd.getpwnam(self.os_user)
            for path in (self.cluster, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self._check_reachable(owner.pw_uid)
        try:
            self._run(
                "initdb", "-D", str(self.cluster), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.cluster / "postgresql.conf").open("a") as conf:
            conf.write("\n# status-tracker: local connections over TCP only\n")
            conf.write("listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")

    def _check_reachable(self, uid: int) -> None:
        for parent in self.cluster.parents:
            mode = parent.stat().st_mode
            if parent.stat().st_uid != uid and not mode & 0o001:
                raise EmbeddedPostgresError(
                    f"{parent} is not searchable by the '{self.os_user}' user the server runs as; "
                    f"choose a data directory outside it (STATUS_TRACKER_DATA_DIR)."
                )

    def _running_port(self) -> int | None:
        pid_file = self.cluster / "postmaster.pid"
        status = subprocess.run(
            self._command("pg_ctl", "-D", str(self.cluster), "status"),
            capture_output=True,
            text=True,
        )
        if status.returncode != 0 or not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
        return int(lines[3]) if len(lines) > 3 and lines[3].strip() else None

    async def _ensure_database(self) -> None:
        password = self.password_file.read_text().strip()
        connection = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, password=password, database="postgres"
        )
        try:
            exists = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE
            )
            if not exists:
                await connection.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await connection.close()

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        if self.os_user is not None:
            return ["runuser", "-u", self.os_user, "--", *command]
        return command

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            self._command(program, *args), capture_output=True, text=True, cwd=self.cluster
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
