"""The embedded cluster: created, restarted on the same data, stopped."""

import asyncio
import os
import shutil
import subprocess

import asyncpg
import pytest

from status_tracker.embedded_postgres import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_bin_dir,
    sized_settings,
)
from tests.conftest import world_readable_tempdir


async def query(dsn: str, *statements: str) -> object:
    """Run the statements in order; the value of the last."""
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements[:-1]:
            await connection.execute(statement)
        return await connection.fetchval(statements[-1])
    finally:
        await connection.close()


def test_cluster_starts_restarts_on_the_same_data_and_stops():
    directory = world_readable_tempdir("embedded-")
    try:
        cluster = EmbeddedPostgres(directory / "postgres")
        dsn = cluster.start()
        asyncio.run(
            query(dsn, "CREATE TABLE kept (x int)", "INSERT INTO kept VALUES (7)", "SELECT 1")
        )
        assert (directory / "postgres" / "password").stat().st_mode & 0o777 == 0o600
        cluster.stop()
        assert cluster._running_port() is None
        with pytest.raises(OSError):
            asyncio.run(query(dsn, "SELECT 1"))

        again = EmbeddedPostgres(directory / "postgres")
        dsn_again = again.start()
        assert asyncio.run(query(dsn_again, "SELECT x FROM kept")) == 7
        again.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_cluster_already_running_is_reused_and_left_running():
    directory = world_readable_tempdir("embedded-")
    try:
        owner = EmbeddedPostgres(directory / "postgres")
        dsn = owner.start()
        guest = EmbeddedPostgres(directory / "postgres")
        assert guest.start() == dsn
        guest.stop()
        assert asyncio.run(query(dsn, "SELECT 1")) == 1
        owner.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root must hand the server to another user")
def test_as_root_the_server_runs_as_an_unprivileged_user():
    directory = world_readable_tempdir("embedded-")
    try:
        cluster = EmbeddedPostgres(directory / "postgres")
        cluster.start()
        pid = int((cluster.cluster / "postmaster.pid").read_text().split()[0])
        assert os.stat(f"/proc/{pid}").st_uid != 0
        cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_planted_initdb_password_symlink_is_not_followed():
    directory = world_readable_tempdir("embedded-")
    try:
        precious = directory / "precious"
        precious.write_text("root's own file")
        (directory / "postgres").mkdir()
        (directory / "postgres" / "initdb-password").symlink_to(precious)
        cluster = EmbeddedPostgres(directory / "postgres")
        cluster.start()
        cluster.stop()
        assert precious.read_text() == "root's own file"
        assert precious.stat().st_uid == os.geteuid()
        assert not (directory / "postgres" / "initdb-password").exists()
        assert not (directory / "postgres" / "initdb-password").is_symlink()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another user")
def test_the_temporary_password_copy_is_removed_when_the_start_fails():
    directory = world_readable_tempdir("embedded-")
    try:
        unreachable = directory / "private"
        unreachable.mkdir(mode=0o700)  # the server's user cannot reach the cluster in it
        with pytest.raises(EmbeddedPostgresError, match="not searchable"):
            EmbeddedPostgres(unreachable / "postgres").start()
        assert not (unreachable / "postgres" / "initdb-password").exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_data_directory_others_can_write_is_refused():
    directory = world_readable_tempdir("embedded-")
    try:
        (directory / "postgres").mkdir()
        (directory / "postgres").chmod(0o777)
        with pytest.raises(EmbeddedPostgresError, match="writable by other users"):
            EmbeddedPostgres(directory / "postgres").start()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_cluster_left_by_a_dead_process_is_adopted_and_stopped():
    directory = world_readable_tempdir("embedded-")
    try:
        crashed = EmbeddedPostgres(directory / "postgres")
        crashed.start()
        # As if the process that started it had been killed with SIGKILL.
        (directory / "postgres" / "owner-pid").write_text(str(dead_pid()))
        successor = EmbeddedPostgres(directory / "postgres")
        successor.start()
        successor.stop()
        assert successor._running_port() is None
    finally:
        crashed.stop(mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_missing_server_binaries_say_how_to_install_them():
    with pytest.raises(EmbeddedPostgresError, match=r"apt-get install postgresql.*DATABASE_URL"):
        find_bin_dir(path="/nonexistent", pattern="/nonexistent/*/bin/pg_ctl")


@pytest.mark.parametrize(
    ("memory_gib", "shared_buffers"),
    [(0.25, "128MB"), (4, "1024MB"), (24, "6144MB"), (128, "8192MB")],
)
def test_shared_buffers_are_a_quarter_of_memory_within_bounds(memory_gib, shared_buffers):
    settings = sized_settings(int(memory_gib * 2**30))
    assert settings["shared_buffers"] == shared_buffers
    assert settings["checkpoint_timeout"] == "15min"


def test_the_cluster_runs_with_settings_sized_to_the_machine(postgres):
    expected = sized_settings()

    async def shown() -> dict[str, str]:
        connection = await asyncpg.connect(postgres.dsn)
        try:
            return {
                name: await connection.fetchval(f"SELECT current_setting('{name}')")
                for name in ("shared_buffers", "max_wal_size", "checkpoint_timeout")
            }
        finally:
            await connection.close()

    actual = asyncio.run(shown())
    # PostgreSQL shows sizes in its own units: compare in megabytes.
    megabytes = {"MB": 1, "GB": 1024}
    as_mb = {
        name: int(value[:-2]) * megabytes[value[-2:]] if value[-2:] in megabytes else value
        for name, value in actual.items()
    }
    assert as_mb["shared_buffers"] == int(expected["shared_buffers"].removesuffix("MB"))
    assert as_mb["max_wal_size"] == 8 * 1024
    assert actual["checkpoint_timeout"] == "15min"
