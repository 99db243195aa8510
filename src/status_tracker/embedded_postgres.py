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
from status_tracker.private_files import UnsafePath, ensure_dir, read_secret, write_secret

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
        # The pid of the process that started the cluster: a dead one means a crashed run.
        self.owner_file = self.directory / "owner-pid"
        self.os_user = _unprivileged_user()
        if self.os_user is not None and shutil.which("runuser") is None:
            raise EmbeddedPostgresError(
                f"Running as root, the embedded PostgreSQL must run as '{self.os_user}' through "
                "`runuser`, which is not on PATH: install util-linux, run as another user, or "
                "set DATABASE_URL."
            )
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
        password = quote(self._password(), safe="")
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def _password(self) -> str:
        password = read_secret(self.password_file)
        if password is None:
            raise EmbeddedPostgresError(f"{self.password_file} is missing.")
        return password.strip()

    def _server_uid(self) -> tuple[int, ...]:
        return () if self.os_user is None else (pwd.getpwnam(self.os_user).pw_uid,)

    def start(self) -> str:
        """Start the cluster (creating it on first use) and return the URL of its database."""
        try:
            ensure_dir(self.directory)
            if self.cluster.exists() or self.cluster.is_symlink():
                ensure_dir(self.cluster, *self._server_uid())
        except UnsafePath as error:
            raise EmbeddedPostgresError(str(error)) from error
        if not (self.cluster / "PG_VERSION").exists():
            self._initdb()
        running = self._running_port()
        if running is not None and self._owner_gone():
            # Left running by a run of ours that crashed (kill -9): ours to stop on exit.
            log.warning("adopting the postgresql a crashed run left", extra={"port": running})
            self.started_here = True
            self._write_owner()
        if running is None:
            options = {"port": str(self._port_to_use()), **self.server_options}
            flags = " ".join(f"-c {name}={value}" for name, value in options.items())
            self._run(
                "pg_ctl", "-D", str(self.cluster), "-l", str(self.cluster / "server.log"),
                "-w", "-t", "60", "-o", flags, "start",
            )  # fmt: skip
            self.started_here = True
            self._write_owner()
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
        kept = read_secret(remembered)
        if kept is not None and kept.strip().isdigit():
            port = int(kept)
            if not is_listening(port):
                return port
        port = free_port()
        remembered.unlink(missing_ok=True)
        write_secret(remembered, str(port))
        return port

    def _owner_gone(self) -> bool:
        """Whether the process that started the running cluster is gone (or unknown)."""
        kept = read_secret(self.owner_file)
        if kept is None or not kept.strip().isdigit():
            return True
        try:
            os.kill(int(kept), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _write_owner(self) -> None:
        self.owner_file.unlink(missing_ok=True)
        write_secret(self.owner_file, str(os.getpid()))

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster if this object started it; a cluster somebody else runs is left up."""
        if self.started_here and self._running_port() is not None:
            self._run("pg_ctl", "-D", str(self.cluster), "-m", mode, "-w", "stop")
        if self.started_here:
            self.owner_file.unlink(missing_ok=True)
        self.started_here = False

    def _initdb(self) -> None:
        if read_secret(self.password_file) is None:
            write_secret(self.password_file, secrets.token_urlsafe(24))
        # initdb reads the password from a file the server's user can read: a copy, removed after
        # on every path. One left by a crashed run is ours (the directory is): replace it.
        pwfile = self.directory / "initdb-password"
        pwfile.unlink(missing_ok=True)
        owner = pwd.getpwnam(self.os_user) if self.os_user is not None else None
        try:
            write_secret(pwfile, self._password(), owner and (owner.pw_uid, owner.pw_gid))
            self.cluster.mkdir(mode=0o700, exist_ok=True)
            if owner is not None:
                os.chown(self.cluster, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
                self._check_reachable(owner.pw_uid)
            self._run(
                "initdb", "-D", str(self.cluster), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
            )  # fmt: skip
        except UnsafePath as error:
            raise EmbeddedPostgresError(str(error)) from error
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
        password = self._password()
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
