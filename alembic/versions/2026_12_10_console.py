"""The operator console: its sessions, and the audit of every number it revealed.

- `console_sessions`: one row per signed-in browser. The cookie carries a random token; only its
  SHA-256 is stored, so reading the table gives no one a session. `key_sha256` is the SHA-256 of
  the API key that signed in: a session ends when its key is no longer configured. `csrf_token`
  is the token every form of that session posts back.
- `console_reveals`: who (the session's key, by the first characters of its SHA-256) saw which
  message's numbers and body, and when. Kept when the message or the session goes.

Both tables are new: existing messages and events are not touched. Downgrade drops them.

Revision ID: 2026_12_10_console
Revises: 2026_12_09_event_streams
Create Date: 2026-12-10
"""

from alembic import op

revision = "2026_12_10_console"
down_revision = "2026_12_09_event_streams"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    """
    CREATE TABLE console_sessions (
        token_sha256 text PRIMARY KEY,
        key_sha256 text NOT NULL,
        csrf_token text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL
    )
    """,
    "CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at)",
    """
    CREATE TABLE console_reveals (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_id uuid NOT NULL,
        key_fingerprint text NOT NULL,
        revealed_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX console_reveals_message_id ON console_reveals (message_id, revealed_at)",
)

DOWNGRADE = (
    "DROP TABLE console_reveals",
    "DROP TABLE console_sessions",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
