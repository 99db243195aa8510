"""`status-tracker accounts …` and `status-tracker keys …`: accounts and API keys from the shell.

Secrets are never taken from the command line, where `ps` shows them to every local user: an
option given `-` reads its value from a line of standard input, in the order of the options.
"""

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg

from status_tracker import accounts, api_keys
from status_tracker.accounts import Account
from status_tracker.database import create_pool
from status_tracker.encryption import SecretBox
from status_tracker.settings import Settings

SECRET_HELP = "read from a line of standard input; give - (default: none)"


def _run(work: Callable[[asyncpg.Connection, SecretBox], Awaitable[Any]]) -> Any:
    # Imported here: cli imports this module to build its parser.
    from status_tracker.cli import database, load_settings, run_migrations

    settings = load_settings()
    with database(settings) as (dsn, embedded):
        if embedded:
            run_migrations(dsn)
        return asyncio.run(_with_connection(settings, dsn, work))


async def _with_connection(
    settings: Settings, dsn: str, work: Callable[[asyncpg.Connection, SecretBox], Awaitable[Any]]
) -> Any:
    pool = await create_pool(settings, dsn, max_size=1)
    try:
        async with pool.acquire() as connection:
            return await work(connection, SecretBox.from_settings(settings))
    finally:
        await pool.close()


def _secret(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if value != "-":
        raise SystemExit(f"status-tracker: give {name} as - and the secret on standard input.")
    line = sys.stdin.readline().rstrip("\n")
    if not line:
        raise SystemExit(f"status-tracker: {name}: no line on standard input.")
    return line


def _print_account(row: Any) -> None:
    print("\t".join(str(row[name] or "-") for name in (
        "sid", "friendly_name", "api_key_sid", "default_from", "messaging_service_sid"
    )) + ("\trotating" if row["rotating"] else ""))  # fmt: skip


def accounts_add(args: argparse.Namespace) -> None:
    account = Account(
        sid=args.sid,
        auth_token=_secret(args.auth_token, "--auth-token") or "",
        auth_token_secondary=_secret(args.auth_token_secondary, "--auth-token-secondary"),
        friendly_name=args.name,
        api_key_sid=args.api_key_sid,
        api_key_secret=_secret(args.api_key_secret, "--api-key-secret"),
        default_from=args.default_from,
        messaging_service_sid=args.messaging_service_sid,
    )
    row = _run(lambda connection, box: accounts.add(connection, account, box))
    if row is None:
        raise SystemExit(f"status-tracker: account {args.sid} is already stored.")
    _print_account(row)


def accounts_list(args: argparse.Namespace) -> None:
    for row in _run(lambda connection, box: accounts.list_accounts(connection)):
        _print_account(row)


def accounts_remove(args: argparse.Namespace) -> None:
    if not _run(lambda connection, box: accounts.remove(connection, args.sid)):
        raise SystemExit(f"status-tracker: no account {args.sid}.")


def accounts_rotate_token(args: argparse.Namespace) -> None:
    if (args.secondary is None) == (not args.promote):
        raise SystemExit("status-tracker: give either --secondary - or --promote.")
    token = _secret(args.secondary, "--secondary")
    row = _run(lambda connection, box: accounts.rotate_token(connection, args.sid, box, token))
    if row is None:
        raise SystemExit(f"status-tracker: no account {args.sid}.")
    if row is False:
        raise SystemExit(f"status-tracker: account {args.sid} has no secondary token to promote.")
    _print_account(row)


def accounts_reencrypt(args: argparse.Namespace) -> None:
    count = _run(accounts.reencrypt)
    print(f"{count} accounts' secrets encrypted with the first STATUS_TRACKER_SECRET_KEY")


def _print_key(row: Any) -> None:
    bound = ",".join(row["account_sids"]) if row["account_sids"] is not None else "all-accounts"
    state = f"revoked {row['revoked_at']:%Y-%m-%dT%H:%M:%SZ}" if row["revoked_at"] else "active"
    print(
        f"{row['id']}\t{row['name']}\t{row['prefix']}…\t{','.join(row['scopes'])}\t{bound}\t{state}"
    )


def keys_create(args: argparse.Namespace) -> None:
    scopes = args.scope or ["read"]
    if args.account and "admin" in scopes:
        raise SystemExit("status-tracker: a key bound to accounts cannot have the admin scope.")
    row, key = _run(
        lambda connection, box: api_keys.create(connection, args.name, scopes, args.account)
    )
    _print_key(row)
    print(f"\nAPI key (shown once, stored only as its SHA-256):\n\n    {key}\n")


def keys_list(args: argparse.Namespace) -> None:
    for row in _run(lambda connection, box: api_keys.list_keys(connection)):
        _print_key(row)


def keys_revoke(args: argparse.Namespace) -> None:
    row = _run(lambda connection, box: api_keys.revoke(connection, args.id))
    if row is None:
        raise SystemExit(f"status-tracker: no key {args.id}.")
    _print_key(row)


def account_sid(value: str) -> str:
    if not re.fullmatch(accounts.ACCOUNT_SID_PATTERN, value):
        raise argparse.ArgumentTypeError(f"not an account SID (AC + 32 hex digits): {value!r}")
    return value


def add_commands(commands: Any) -> None:
    """Add `accounts` and `keys` to the command line's subcommands."""
    accounts_parser = commands.add_parser(
        "accounts",
        help="Twilio accounts (subaccounts) the service checks, sends and reconciles for",
        description="Twilio accounts beside the default one of the environment. Secrets are "
        "read from standard input (give -) and stored encrypted with STATUS_TRACKER_SECRET_KEY.",
    )
    actions = accounts_parser.add_subparsers(
        dest="action", required=True, metavar="ACTION",
        help="add, list, remove, rotate-token or reencrypt (no default: give one)",
    )  # fmt: skip
    sid = {"type": account_sid, "metavar": "ACCOUNT_SID", "help": "AC… (no default)"}

    add = actions.add_parser("add", help="store an account")
    add.add_argument("sid", **sid)
    add.add_argument(
        "--auth-token",
        required=True,
        metavar="-",
        help="primary auth token, " + SECRET_HELP.replace(" (default: none)", ""),
    )
    add.add_argument("--auth-token-secondary", metavar="-", help="secondary token, " + SECRET_HELP)
    add.add_argument(
        "--api-key-sid",
        metavar="SK…",
        help="API key for REST calls (default: none: the auth token authenticates)",
    )
    add.add_argument("--api-key-secret", metavar="-", help="its secret, " + SECRET_HELP)
    add.add_argument("--name", metavar="TEXT", help="a name for people (default: none)")
    add.add_argument("--default-from", metavar="NUMBER", help="default sender (default: none)")
    add.add_argument(
        "--messaging-service-sid",
        metavar="MG…",
        help="default Messaging Service, preferred over --default-from (default: none)",
    )
    add.set_defaults(handler=accounts_add)  # fmt: skip

    actions.add_parser("list", help="list the accounts (never their secrets)").set_defaults(
        handler=accounts_list
    )
    remove = actions.add_parser("remove", help="remove an account: its callbacks are refused")
    remove.add_argument("sid", **sid)
    remove.set_defaults(handler=accounts_remove)

    rotate = actions.add_parser(
        "rotate-token",
        help="rotate an auth token in two steps, as Twilio does",
        description="First --secondary -: the new token is accepted beside the primary. Once "
        "Twilio's console has promoted it: --promote, and the old one is no longer accepted.",
    )
    rotate.add_argument("sid", **sid)
    rotate.add_argument("--secondary", metavar="-", help="the new token, " + SECRET_HELP)
    rotate.add_argument("--promote", action="store_true",
                        help="make the secondary token the primary (default: off)")  # fmt: skip
    rotate.set_defaults(handler=accounts_rotate_token)

    actions.add_parser(
        "reencrypt",
        help="encrypt every stored secret again with the first STATUS_TRACKER_SECRET_KEY",
    ).set_defaults(handler=accounts_reencrypt)

    keys_parser = commands.add_parser(
        "keys",
        help="API keys, stored hashed, with scopes and optionally bound to accounts",
        description="API keys for /v1. A key is shown once, when created; only its SHA-256 is "
        "stored.",
    )
    key_actions = keys_parser.add_subparsers(
        dest="action", required=True, metavar="ACTION",
        help="create, list or revoke (no default: give one)",
    )  # fmt: skip
    create = key_actions.add_parser("create", help="create a key and show it once")
    create.add_argument("name", metavar="NAME", help="who or what uses it (no default)")
    create.add_argument(
        "--scope",
        action="append",
        choices=api_keys.SCOPES,
        metavar="SCOPE",
        help="read, send or admin; repeatable (default: read)",
    )
    create.add_argument(
        "--account",
        action="append",
        type=account_sid,
        metavar="ACCOUNT_SID",
        help="bind the key to this account; repeatable (default: every account)",
    )
    create.set_defaults(handler=keys_create)  # fmt: skip
    key_actions.add_parser("list", help="list the keys (never the keys themselves)").set_defaults(
        handler=keys_list
    )
    revoke = key_actions.add_parser("revoke", help="revoke a key, at once")
    revoke.add_argument("id", type=UUID, metavar="KEY_ID", help="its id, from list (no default)")
    revoke.set_defaults(handler=keys_revoke)
