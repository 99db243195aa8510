"""`status-tracker serve` and `migrate` as a new user runs them."""

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from status_tracker.cli import parser
from status_tracker.database import downgrade, migrate
from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.ports import free_port
from tests.conftest import ENV_PREFIXES, Server, world_readable_tempdir
from tests.support import AUTH_TOKEN, callback_fields, new_sid, signed


def test_one_command_start_on_embedded_defaults_then_restart_on_the_same_data():
    directory = world_readable_tempdir("serve-")
    data_dir = directory / ".status-tracker"
    try:
        with Server({"TWILIO_AUTH_TOKEN": AUTH_TOKEN}, directory) as first:
            sid = new_sid()
            target, body, headers = signed(callback_fields(sid, "delivered"), public_url=first.url)
            assert httpx.post(first.url + target, content=body, headers=headers).status_code == 204
            code, printed = first.stop()
        assert code == 0
        key = re.search(r"API key \(shown once.*\):\s+(\S+)", printed)
        assert key is not None, printed
        assert (data_dir / "api-key").read_text().strip() == key.group(1)
        # The cluster is stopped with the service.
        assert not (data_dir / "postgres" / "cluster" / "postmaster.pid").exists()

        with Server({"TWILIO_AUTH_TOKEN": AUTH_TOKEN}, directory) as second:
            auth = {"Authorization": f"Bearer {key.group(1)}"}
            message = httpx.get(f"{second.url}/v1/messages/{sid}", headers=auth)
            assert message.status_code == 200
            assert message.json()["status"] == "delivered"
            code, printed = second.stop()
        assert code == 0
        assert key.group(1) not in printed  # shown once, never again
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_server_logs_carry_no_secrets_and_no_full_numbers(server: Server):
    target, body, headers = signed(
        callback_fields(new_sid(), "undelivered", ErrorCode="30003"), public_url=server.url
    )
    httpx.post(server.url + target, content=body, headers=headers)
    server.stop()
    logged = server.log.read_text()
    assert AUTH_TOKEN not in logged
    assert "+14155550100" not in logged


def test_migrations_go_down_and_up_again(database_url: str):
    async def tables() -> set[str]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        finally:
            await connection.close()
        return {row["tablename"] for row in rows}

    assert {"messages", "message_events"} <= asyncio.run(tables())
    downgrade(database_url, "base")
    assert asyncio.run(tables()) == {"alembic_version"}
    migrate(database_url)
    assert {"messages", "message_events"} <= asyncio.run(tables())


def test_several_workers_serve_and_store(database_url: str, tmp_path):
    environment = {
        "DATABASE_URL": database_url,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "STATUS_TRACKER_API_KEYS": "k",
        "STATUS_TRACKER_DATA_DIR": str(tmp_path / "data"),
    }
    sids = [new_sid() for _ in range(40)]
    with Server(environment, tmp_path, "--workers", "2") as server:
        with httpx.Client(base_url=server.url) as client:
            for sid in sids:
                target, body, headers = signed(callback_fields(sid, "sent"), public_url=server.url)
                assert client.post(target, content=body, headers=headers).status_code == 204
        code, _ = server.stop()
    assert code == 0
    assert server.log.read_text().count("Started server process") == 2

    async def stored() -> set[str]:
        connection = await asyncpg.connect(database_url)
        try:
            return {row["sid"] for row in await connection.fetch("SELECT sid FROM messages")}
        finally:
            await connection.close()

    assert asyncio.run(stored()) == set(sids)


def test_without_twilio_credentials_it_sends_through_the_built_in_simulator():
    directory = world_readable_tempdir("simulator-mode-")
    try:
        with Server({}, directory) as server:
            key = (directory / ".status-tracker" / "api-key").read_text().strip()
            auth = {"Authorization": f"Bearer {key}"}
            assert httpx.get(f"{server.url}/docs").status_code == 200
            sent = httpx.post(
                f"{server.url}/v1/messages", json={"to": "+14155550100", "body": "hi"}, headers=auth
            )
            assert sent.status_code == 201, sent.text
            deadline = time.monotonic() + 20
            while True:
                message = httpx.get(f"{server.url}/v1/messages/{sent.json()['id']}", headers=auth)
                if message.json()["status"] == "delivered" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            code, printed = server.stop()
        assert message.json()["status"] == "delivered"
        assert [e["source"] for e in message.json()["events"]].count("callback") >= 2
        assert "SIMULATOR MODE" in printed
        assert code == 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    environment.update(env)
    return subprocess.run(
        ["status-tracker", *args], env=environment, cwd=cwd, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("status-tracker: "), result.stderr
    for word in words:
        assert word in last, last


UNREACHABLE = "postgresql://someone:s3cret-pw@127.0.0.1:{port}/nowhere"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unreachable_database_is_one_line_not_a_traceback(command: str, tmp_path: Path):
    url = UNREACHABLE.format(port=free_port())
    result = run_cli(command, env={"DATABASE_URL": url}, cwd=tmp_path)
    assert_one_line_refusal(result, "cannot connect to the database", "DATABASE_URL")
    assert "s3cret-pw" not in result.stderr


def test_a_wrong_database_password_is_one_line(database_url: str, tmp_path: Path):
    wrong = database_url.replace("@", "x@", 1)  # the password, changed
    result = run_cli("migrate", env={"DATABASE_URL": wrong}, cwd=tmp_path)
    assert_one_line_refusal(result, "cannot connect to the database", "password")


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unsupported_database_scheme_is_one_line(command: str, tmp_path: Path):
    result = run_cli(command, env={"DATABASE_URL": "mysql://u:p@localhost/db"}, cwd=tmp_path)
    assert_one_line_refusal(result, "postgresql://", "mysql")


def test_a_data_directory_that_cannot_be_created_is_one_line(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    env = {"STATUS_TRACKER_DATA_DIR": str(tmp_path / "file" / "data")}
    result = run_cli("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert_one_line_refusal(result, "cannot create the data directory", "STATUS_TRACKER_DATA_DIR")


def test_a_data_directory_others_can_write_is_refused_before_anything_starts(tmp_path: Path):
    data_dir = tmp_path / "shared"
    data_dir.mkdir(mode=0o777)
    data_dir.chmod(0o777)
    env = {"STATUS_TRACKER_DATA_DIR": str(data_dir)}
    result = run_cli("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert_one_line_refusal(result, "writable by other users")
    assert list(data_dir.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server through runuser")
def test_runuser_missing_is_one_line(tmp_path: Path):
    env = {"PATH": str(Path(sys.executable).parent), "STATUS_TRACKER_DATA_DIR": str(tmp_path / "d")}
    result = run_cli("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert_one_line_refusal(result, "runuser")


def test_a_port_in_use_is_refused_before_postgresql_starts(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"STATUS_TRACKER_DATA_DIR": str(tmp_path / "data")}
        result = run_cli("serve", "--port", str(port), env=env, cwd=tmp_path)
    assert_one_line_refusal(result, f"127.0.0.1:{port}", "--port")
    assert not (tmp_path / "data" / "postgres").exists()


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_after_kill_9_the_simulator_exits_and_the_next_start_adopts_and_stops_the_cluster():
    directory = world_readable_tempdir("killed-")
    pid_file = directory / ".status-tracker" / "postgres" / "cluster" / "postmaster.pid"
    simulators: list[int] = []
    try:
        first = Server({}, directory)
        first.wait_ready()
        simulators += children(first.process.pid)
        assert simulators, "the simulator runs as a child of serve"
        first.process.kill()
        first.process.wait()  # not communicate(): a surviving simulator would hold its stdout
        assert first.process.stdout is not None
        first.process.stdout.close()
        first._log_file.close()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in simulators) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in simulators), "the simulator outlived serve"
        assert pid_file.exists()  # PostgreSQL cannot know: it is still running

        with Server({}, directory) as second:
            code, _ = second.stop()
        assert code == 0
        assert not pid_file.exists(), "the adopted cluster was left running"
    finally:
        for pid in filter(alive, simulators):
            os.kill(pid, signal.SIGKILL)
        if pid_file.exists():
            leftover = EmbeddedPostgres(directory / ".status-tracker" / "postgres")
            leftover.started_here = True
            leftover.stop(mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)


def test_simulator_mode_restart_keeps_the_simulators_messages_for_reconciliation():
    """The built-in simulator keeps its messages in the data directory: after a restart, the
    first reconciliation pass still finds them there, and reports no `not_at_twilio`."""
    directory = world_readable_tempdir("simulator-restart-")
    environment = {"STATUS_TRACKER_RECONCILE_INTERVAL": "2"}
    try:
        with Server(environment, directory) as first:
            key = (directory / ".status-tracker" / "api-key").read_text().strip()
            auth = {"Authorization": f"Bearer {key}"}
            ids = [
                httpx.post(
                    f"{first.url}/v1/messages", json={"to": to, "body": "hi"}, headers=auth
                ).json()["id"]
                for to in ("+14155550100", "+14155550101", "+14155550001")
            ]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                statuses = [
                    httpx.get(f"{first.url}/v1/messages/{id_}", headers=auth).json()["status"]
                    for id_ in ids
                ]
                if statuses == ["delivered", "delivered", "undelivered"]:
                    break
                time.sleep(0.2)
            assert first.stop()[0] == 0
        assert statuses == ["delivered", "delivered", "undelivered"]

        with Server(environment, directory) as second:
            restarted = httpx.get(f"{second.url}/v1/reconciliations", headers=auth).json()
            seen = {run["id"] for run in restarted}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                runs = httpx.get(f"{second.url}/v1/reconciliations", headers=auth).json()
                new = [r for r in runs if r["id"] not in seen and r["state"] == "finished"]
                if new:
                    break
                time.sleep(0.2)
            second.stop()
        assert new, runs
        assert "not_at_twilio" not in new[0]["counts"], new[0]
        assert new[0]["errors"] == []
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_every_option_of_every_command_says_what_it_does_its_default_and_format():
    commands = next(
        action for action in parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    undocumented = []
    for name, command in commands.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            takes_value = action.nargs != 0
            if "default" not in text or (takes_value and action.metavar is None):
                undocumented.append((name, action.dest))
    assert undocumented == []
    help_text = commands.choices["reconcile"].format_help()
    assert "2026-11-24T00:00:00Z" in help_text
