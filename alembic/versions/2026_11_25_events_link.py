"""The event log's link to its message, kept by triggers instead of a foreign key.

The foreign key checked every event as it was appended: a lookup and a row lock in `messages`
per callback, about a seventh of the database's work on the ingest path, for a link the insert
itself has just established (every statement that appends an event takes its message id from
the row it has just written in `messages`). What the key also guarded is kept, at no cost to
the ingest path: a message that has events cannot be deleted, and an event can only be re-linked
to a message that exists.

Revision ID: 2026_11_25_events_link
Revises: 2026_11_24_reconciliations
Create Date: 2026-11-25
"""

from alembic import op

revision = "2026_11_25_events_link"
down_revision = "2026_11_24_reconciliations"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    "ALTER TABLE message_events DROP CONSTRAINT message_events_message_id_fkey",
    """
    CREATE FUNCTION messages_keep_their_events() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'TRUNCATE'
           OR EXISTS (SELECT 1 FROM message_events WHERE message_id = OLD.id) THEN
            RAISE EXCEPTION 'a message with events cannot be deleted'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN OLD;
    END
    $$
    """,
    """
    CREATE TRIGGER messages_keep_their_events
        BEFORE DELETE ON messages
        FOR EACH ROW EXECUTE FUNCTION messages_keep_their_events()
    """,
    """
    CREATE TRIGGER messages_no_truncate
        BEFORE TRUNCATE ON messages
        FOR EACH STATEMENT EXECUTE FUNCTION messages_keep_their_events()
    """,
    """
    CREATE OR REPLACE FUNCTION message_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - 'message_id' = to_jsonb(OLD) - 'message_id' THEN
            IF NOT EXISTS (SELECT 1 FROM messages WHERE id = NEW.message_id) THEN
                RAISE EXCEPTION 'an event can only be re-linked to a message that exists'
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'message_events is append-only';
    END
    $$
    """,
)

DOWNGRADE = (
    """
    CREATE OR REPLACE FUNCTION message_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - 'message_id' = to_jsonb(OLD) - 'message_id' THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'message_events is append-only';
    END
    $$
    """,
    "DROP TRIGGER messages_no_truncate ON messages",
    "DROP TRIGGER messages_keep_their_events ON messages",
    "DROP FUNCTION messages_keep_their_events()",
    """
    ALTER TABLE message_events ADD CONSTRAINT message_events_message_id_fkey
        FOREIGN KEY (message_id) REFERENCES messages (id)
    """,
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
