"""Messages, with their winning status, and the append-only log of every report.

Revision ID: 2026_11_24_messages
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "2026_11_24_messages"
down_revision = None
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    """
    CREATE TABLE messages (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        sid text UNIQUE,
        account_sid text,
        direction text NOT NULL DEFAULT 'outbound-api',
        status text NOT NULL,
        status_rank smallint NOT NULL,
        error_code integer,
        to_number text,
        from_number text,
        messaging_service_sid text,
        channel text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        sent_at timestamptz,
        delivered_at timestamptz,
        read_at timestamptz,
        final_at timestamptz
    )
    """,
    """
    CREATE TABLE message_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_id uuid NOT NULL REFERENCES messages (id),
        status text NOT NULL,
        status_rank smallint NOT NULL,
        error_code integer,
        source text NOT NULL,
        received_at timestamptz NOT NULL,
        carrier_done_at timestamptz,
        fields jsonb NOT NULL DEFAULT '{}',
        query jsonb NOT NULL DEFAULT '{}',
        idempotency_token text
    )
    """,
    "CREATE INDEX message_events_message_id ON message_events (message_id, id)",
    # The event log is evidence: nobody edits or deletes it, not even by mistake. The one change
    # allowed is re-linking an event to another message (when two records of one message merge).
    """
    CREATE FUNCTION message_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - 'message_id' = to_jsonb(OLD) - 'message_id' THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'message_events is append-only';
    END
    $$
    """,
    """
    CREATE TRIGGER message_events_append_only
        BEFORE UPDATE OR DELETE ON message_events
        FOR EACH ROW EXECUTE FUNCTION message_events_append_only()
    """,
    """
    CREATE TRIGGER message_events_no_truncate
        BEFORE TRUNCATE ON message_events
        FOR EACH STATEMENT EXECUTE FUNCTION message_events_append_only()
    """,
)

DOWNGRADE = (
    "DROP TABLE message_events",
    "DROP FUNCTION message_events_append_only()",
    "DROP TABLE messages",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
