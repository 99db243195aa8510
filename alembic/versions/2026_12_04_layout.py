"""A storage layout that stays fast with tens of millions of messages.

- Message ids are time-ordered (UUIDv7): new messages and the events appended to them land on
  the most recent pages of the primary key and of the event log's index, instead of random ones.
  Existing ids are kept: clients hold them.
- Fewer index entries per status change. Every change of status writes a new row version, and
  each index gets an entry for it: the idempotency key index now holds only the sends that
  carry a key. (Partial status and direction indexes were considered and not kept: list queries
  are prepared with the filter as a parameter, and a generic plan cannot use a partial index.)
- Room on each page of `messages` (fillfactor 90), so that a report that does not change the
  status (a duplicate, a late `sent`) can update the row in place, without index entries.
- Autovacuum keeps up with an append-heavy event log and a hot message table.
- An event can only be appended to a message that exists, whatever writes it: a check per
  statement (over the rows it appended), not per row, so that the ingest path does not pay a
  lookup and a row lock for each event.

Revision ID: 2026_12_04_layout
Revises: 2026_11_25_events_link
Create Date: 2026-12-04
"""

from alembic import op

revision = "2026_12_04_layout"
down_revision = "2026_11_25_events_link"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    # UUIDv7: 48 bits of Unix milliseconds, version 7, then random bits (status_tracker.ids).
    """
    CREATE FUNCTION uuid7(at timestamptz DEFAULT clock_timestamp()) RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
        SELECT encode(
            set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint)
                                      FROM 3)
                    FROM 1 FOR 6), 52, 1), 53, 1),
            'hex')::uuid
    $$
    """,
    "ALTER TABLE messages ALTER COLUMN id SET DEFAULT uuid7()",
    "ALTER TABLE messages DROP CONSTRAINT messages_idempotency_key_key",
    "CREATE UNIQUE INDEX messages_idempotency_key ON messages (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
    """
    ALTER TABLE messages SET (
        fillfactor = 90,
        autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02
    )
    """,
    """
    ALTER TABLE message_events SET (
        autovacuum_vacuum_insert_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02
    )
    """,
    """
    CREATE FUNCTION message_events_have_messages() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        event_message uuid;
    BEGIN
        -- One primary-key probe per event, rather than one join: the plan of a join is kept
        -- for the session, and one chosen while the table was small would scan all of it
        -- once it is large.
        FOR event_message IN SELECT message_id FROM appended LOOP
            IF NOT EXISTS (SELECT 1 FROM messages WHERE id = event_message) THEN
                RAISE EXCEPTION 'an event can only be appended to a message that exists'
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
        END LOOP;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER message_events_have_messages
        AFTER INSERT ON message_events REFERENCING NEW TABLE AS appended
        FOR EACH STATEMENT EXECUTE FUNCTION message_events_have_messages()
    """,
)

DOWNGRADE = (
    "DROP TRIGGER message_events_have_messages ON message_events",
    "DROP FUNCTION message_events_have_messages()",
    """
    ALTER TABLE message_events RESET (
        autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor
    )
    """,
    """
    ALTER TABLE messages RESET (
        fillfactor, autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor
    )
    """,
    "DROP INDEX messages_idempotency_key",
    "ALTER TABLE messages ADD CONSTRAINT messages_idempotency_key_key UNIQUE (idempotency_key)",
    "ALTER TABLE messages ALTER COLUMN id SET DEFAULT gen_random_uuid()",
    "DROP FUNCTION uuid7(timestamptz)",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
