"""Inbound messages, opt-outs, and the indexes of the query API.

Revision ID: 2026_11_24_query
Revises: 2026_11_24_sending
Create Date: 2026-11-24
"""

from alembic import op

revision = "2026_11_24_query"
down_revision = "2026_11_24_sending"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
# Every list filter leads with its own column and ends with the keyset order (created_at, id), so a
# page is an index range scan whatever the table's size.
INDEXES = {
    "messages_created": "(created_at DESC, id DESC)",
    "messages_status_created": "(status, created_at DESC, id DESC)",
    "messages_direction_created": "(direction, created_at DESC, id DESC)",
    "messages_to_created": "(to_number, created_at DESC, id DESC)",
    "messages_from_created": "(from_number, created_at DESC, id DESC)",
    "messages_error_code_created": "(error_code, created_at DESC, id DESC) "
    "WHERE error_code IS NOT NULL",
    "messages_reference_created": "(reference, created_at DESC, id DESC) "
    "WHERE reference IS NOT NULL",
    "messages_in_reply_to": "(in_reply_to) WHERE in_reply_to IS NOT NULL",
}

UPGRADE = (
    *(f"CREATE INDEX {name} ON messages {columns}" for name, columns in INDEXES.items()),
    # Opt-outs are kept by a hash of the number, so that enforcing them needs no phone number
    # stored, whatever STATUS_TRACKER_REDACT_NUMBERS says.
    """
    CREATE TABLE opt_outs (
        number_sha256 text PRIMARY KEY,
        opted_out boolean NOT NULL,
        keyword text NOT NULL,
        changed_at timestamptz NOT NULL,
        message_id uuid REFERENCES messages (id)
    )
    """,
)

DOWNGRADE = ("DROP TABLE opt_outs", *(f"DROP INDEX {name}" for name in INDEXES))


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
