"""What the service itself sends: the request, the client's reference, the send's outcome.

Revision ID: 2026_11_24_sending
Revises: 2026_11_24_messages
Create Date: 2026-11-24
"""

from alembic import op

revision = "2026_11_24_sending"
down_revision = "2026_11_24_messages"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    """
    ALTER TABLE messages
        ADD COLUMN body text,
        ADD COLUMN media_urls jsonb,
        ADD COLUMN content_sid text,
        ADD COLUMN content_variables jsonb,
        ADD COLUMN send_at timestamptz,
        ADD COLUMN validity_period integer,
        ADD COLUMN reference text,
        ADD COLUMN metadata jsonb,
        ADD COLUMN idempotency_key text UNIQUE,
        ADD COLUMN request_hash text,
        ADD COLUMN send_outcome text,
        ADD COLUMN in_reply_to uuid REFERENCES messages (id)
    """,
    # send_outcome: pending (recorded, Twilio not answered yet), accepted, refused, or unknown
    # (Twilio unreachable, 5xx or timed out: reconciliation settles it).
    """
    ALTER TABLE messages ADD CONSTRAINT messages_send_outcome
        CHECK (send_outcome IN ('pending', 'accepted', 'refused', 'unknown'))
    """,
    "CREATE INDEX messages_unsettled ON messages (created_at) "
    "WHERE send_outcome IN ('pending', 'unknown')",
)

DOWNGRADE = (
    "DROP INDEX messages_unsettled",
    """
    ALTER TABLE messages
        DROP COLUMN in_reply_to,
        DROP COLUMN send_outcome,
        DROP COLUMN request_hash,
        DROP COLUMN idempotency_key,
        DROP COLUMN metadata,
        DROP COLUMN reference,
        DROP COLUMN validity_period,
        DROP COLUMN send_at,
        DROP COLUMN content_variables,
        DROP COLUMN content_sid,
        DROP COLUMN media_urls,
        DROP COLUMN body
    """,
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
