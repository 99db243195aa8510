"""Months of data: hourly rollups, a customer country per message, a partitioned event log.

- `messages.country`: the customer's country (ISO 3166 alpha-2, from the `phonenumbers`
  library at ingest). Existing messages are left without one: filling it would rewrite every
  row of the table, and every index entry, hours on a large store.
- `message_rollups`: messages counted by the hour they were created and account: in total by
  status, error code and a histogram bucket of their time from `sent` to `delivered`; and by
  status for each value of what a dashboard breaks delivery down by (country, sender, Messaging
  Service). Kept by triggers on
  `messages`: each statement that inserts or changes messages appends its net changes to
  `message_rollup_deltas` (inserts only: concurrent writers never wait on a shared counter
  row), and the service folds the deltas into `message_rollups` every few seconds. A message
  whose status changes moves from its old bucket to its new one; one deleted (two records of
  one message merged) leaves its bucket. Retention removing old messages, or restoring them,
  leaves the rollups alone (it says so with `SET LOCAL status_tracker.retention = on`): they
  outlive the rows they count. Filled from the existing messages here.
- `message_events` becomes partitioned by `received_at`, one partition a day (UTC), so that
  retention drops whole days. The existing log becomes its first partition as it is, without
  a rewrite (`message_events_legacy`, holding every event received before the day after this
  migration); it is dropped as a whole once its newest day is past the horizon. Event ids go on
  from the same sequence. The append-only triggers move to the partitioned table.
- `event_partitions`: what retention did with each partition (archived, verified, dropped).
- A message that retention removes takes no reply or opt-out with it: their links to it are
  cleared (ON DELETE SET NULL), and the check that a message being deleted has no events reads
  only the partitions that can hold them (received since the message was created).

Revision ID: 2026_12_06_months
Revises: 2026_12_05_fidelity
Create Date: 2026-12-06
"""

from datetime import UTC, datetime, timedelta

from alembic import op
from sqlalchemy import text

revision = "2026_12_06_months"
down_revision = "2026_12_05_fidelity"
branch_labels = None
depends_on = None

# Seconds from `sent` to `delivered`: the upper bounds of the histogram buckets (0 is below
# the first bound). Written out: a shipped migration does not change with the code.
DELIVERY_BOUNDS = "0.5,1,2,3,5,8,13,20,30,45,60,90,120,180,300,600,900,1800,3600,7200,21600,86400"

# What a message is counted by: the totals (`breakdown` ''), by status, error code and delivery
# time; and each breakdown apart, by status, with the breakdown's value. One table per breakdown
# in effect: rows a dashboard reads grow with each dimension's values, not with their product.
DIMENSIONS = "hour, account_sid, breakdown, value, status, error_code, delivery_bucket"
ROWS_OF_MESSAGES = """
    SELECT date_trunc('hour', m.created_at, 'UTC'), m.account_sid, d.breakdown, d.value,
           m.status, d.error_code, d.delivery_bucket, {sign}
    FROM {rows} AS m CROSS JOIN LATERAL (VALUES
        ('', NULL::text, m.error_code, message_delivery_bucket(m.sent_at, m.delivered_at)),
        ('country', m.country, NULL::integer, NULL::smallint),
        ('from', CASE WHEN m.direction <> 'inbound' THEN m.from_number END, NULL, NULL),
        ('messaging_service', m.messaging_service_sid, NULL, NULL)
    ) AS d (breakdown, value, error_code, delivery_bucket)
"""
GROUP_ALL = "GROUP BY 1, 2, 3, 4, 5, 6, 7"

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
BEFORE_BACKFILL = (
    "ALTER TABLE messages ADD COLUMN country text",
    f"""
    CREATE FUNCTION message_delivery_bucket(sent_at timestamptz, delivered_at timestamptz)
    RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN delivered_at >= sent_at THEN
            width_bucket(extract(epoch FROM delivered_at - sent_at)::float8,
                         '{{{DELIVERY_BOUNDS}}}'::float8[])::smallint
        END
    $$
    """,
)

ROLLUPS = (
    """
    CREATE TABLE message_rollups (
        hour timestamptz NOT NULL,
        account_sid text,
        breakdown text NOT NULL,
        value text,
        status text NOT NULL,
        error_code integer,
        delivery_bucket smallint,
        messages bigint NOT NULL,
        CONSTRAINT message_rollups_key UNIQUE NULLS NOT DISTINCT (
            breakdown, hour, value, account_sid, status, error_code, delivery_bucket
        )
    )
    """,
    """
    CREATE TABLE message_rollup_deltas (
        hour timestamptz NOT NULL,
        account_sid text,
        breakdown text NOT NULL,
        value text,
        status text NOT NULL,
        error_code integer,
        delivery_bucket smallint,
        messages bigint NOT NULL
    )
    """,
    "ALTER TABLE message_rollup_deltas SET (autovacuum_vacuum_scale_factor = 0, "
    "autovacuum_vacuum_threshold = 10000)",
    f"""
    INSERT INTO message_rollups ({DIMENSIONS}, messages)
    SELECT {DIMENSIONS}, sum(change) FROM (
        {ROWS_OF_MESSAGES.format(sign=1, rows="messages")}
    ) AS counted ({DIMENSIONS}, change)
    {GROUP_ALL}
    """,
    # Statement-level: one aggregate over the rows a statement touched, not a call per row.
    f"""
    CREATE FUNCTION messages_roll_up() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- Retention removing what the rollups keep counting, or restoring it from an archive.
        IF current_setting('status_tracker.retention', true) = 'on' THEN
            RETURN NULL;
        END IF;
        IF TG_OP = 'INSERT' THEN
            INSERT INTO message_rollup_deltas ({DIMENSIONS}, messages)
            SELECT {DIMENSIONS}, sum(change) FROM (
                {ROWS_OF_MESSAGES.format(sign=1, rows="new_rows")}
            ) AS counted ({DIMENSIONS}, change)
            {GROUP_ALL};
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO message_rollup_deltas ({DIMENSIONS}, messages)
            SELECT {DIMENSIONS}, sum(change) FROM (
                {ROWS_OF_MESSAGES.format(sign=-1, rows="old_rows")}
            ) AS counted ({DIMENSIONS}, change)
            {GROUP_ALL};
        ELSE
            INSERT INTO message_rollup_deltas ({DIMENSIONS}, messages)
            SELECT {DIMENSIONS}, sum(change) FROM (
                {ROWS_OF_MESSAGES.format(sign=1, rows="new_rows")}
                UNION ALL
                {ROWS_OF_MESSAGES.format(sign=-1, rows="old_rows")}
            ) AS changes ({DIMENSIONS}, change)
            {GROUP_ALL}
            HAVING sum(change) <> 0;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER messages_roll_up_inserts
        AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION messages_roll_up()
    """,
    """
    CREATE TRIGGER messages_roll_up_deletes
        AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION messages_roll_up()
    """,
    """
    CREATE TRIGGER messages_roll_up_changes
        AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION messages_roll_up()
    """,
)

# The event log's triggers, made again on the table that replaces it (either way).
EVENT_LOG_TRIGGERS = (
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
    """
    CREATE TRIGGER message_events_have_messages
        AFTER INSERT ON message_events REFERENCING NEW TABLE AS appended
        FOR EACH STATEMENT EXECUTE FUNCTION message_events_have_messages()
    """,
)

PARTITIONS = (
    "DROP TRIGGER message_events_append_only ON message_events",
    "DROP TRIGGER message_events_no_truncate ON message_events",
    "DROP TRIGGER message_events_have_messages ON message_events",
    "ALTER TABLE message_events RENAME TO message_events_legacy",
    "ALTER INDEX message_events_message_id RENAME TO message_events_legacy_message_id",
    "ALTER INDEX message_events_pkey RENAME TO message_events_legacy_pkey",
    "ALTER TABLE message_events_legacy ALTER COLUMN id DROP IDENTITY",
    "CREATE SEQUENCE message_events_id_seq",
    "SELECT setval('message_events_id_seq', "
    "coalesce((SELECT max(id) FROM message_events_legacy), 0) + 1, false)",
    """
    CREATE TABLE message_events (
        id bigint NOT NULL DEFAULT nextval('message_events_id_seq'),
        message_id uuid NOT NULL,
        status text NOT NULL,
        status_rank smallint NOT NULL,
        error_code integer,
        source text NOT NULL,
        received_at timestamptz NOT NULL,
        carrier_done_at timestamptz,
        fields jsonb NOT NULL DEFAULT '{}',
        query jsonb NOT NULL DEFAULT '{}',
        idempotency_token text
    ) PARTITION BY RANGE (received_at)
    """,
    "ALTER SEQUENCE message_events_id_seq OWNED BY message_events.id",
    "CREATE INDEX message_events_message_id ON message_events (message_id, id)",
    *EVENT_LOG_TRIGGERS,
    """
    CREATE TABLE event_partitions (
        name text PRIMARY KEY,
        since timestamptz,
        until timestamptz NOT NULL,
        events bigint,
        archive text,
        archive_sha256 text,
        archived_at timestamptz,
        dropped_at timestamptz
    )
    """,
    """
    CREATE OR REPLACE FUNCTION messages_keep_their_events() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- A message's events are received after it is created (a day's margin for clocks):
        -- only the partitions since then are read.
        IF TG_OP = 'TRUNCATE'
           OR EXISTS (SELECT 1 FROM message_events WHERE message_id = OLD.id
                      AND received_at >= OLD.created_at - interval '1 day') THEN
            RAISE EXCEPTION 'a message with events cannot be deleted'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN OLD;
    END
    $$
    """,
    "ALTER TABLE messages DROP CONSTRAINT messages_in_reply_to_fkey",
    "ALTER TABLE messages ADD CONSTRAINT messages_in_reply_to_fkey FOREIGN KEY (in_reply_to) "
    "REFERENCES messages (id) ON DELETE SET NULL NOT VALID",
    "ALTER TABLE messages VALIDATE CONSTRAINT messages_in_reply_to_fkey",
    "ALTER TABLE opt_outs DROP CONSTRAINT opt_outs_message_id_fkey",
    "ALTER TABLE opt_outs ADD CONSTRAINT opt_outs_message_id_fkey FOREIGN KEY (message_id) "
    "REFERENCES messages (id) ON DELETE SET NULL",
)

DOWNGRADE = (
    "ALTER TABLE opt_outs DROP CONSTRAINT opt_outs_message_id_fkey",
    "ALTER TABLE opt_outs ADD CONSTRAINT opt_outs_message_id_fkey FOREIGN KEY (message_id) "
    "REFERENCES messages (id)",
    "ALTER TABLE messages DROP CONSTRAINT messages_in_reply_to_fkey",
    "ALTER TABLE messages ADD CONSTRAINT messages_in_reply_to_fkey FOREIGN KEY (in_reply_to) "
    "REFERENCES messages (id)",
    """
    CREATE OR REPLACE FUNCTION messages_keep_their_events() RETURNS trigger LANGUAGE plpgsql AS $$
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
    "DROP TABLE event_partitions",
    # The partitions' rows go back into one plain table, in id order.
    "ALTER TABLE message_events RENAME TO message_events_partitioned",
    """
    CREATE TABLE message_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_id uuid NOT NULL,
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
    "INSERT INTO message_events OVERRIDING SYSTEM VALUE "
    "SELECT * FROM message_events_partitioned ORDER BY id",
    "SELECT setval(pg_get_serial_sequence('message_events', 'id'), "
    "coalesce((SELECT max(id) FROM message_events), 0) + 1, false)",
    "DROP TABLE message_events_partitioned",
    "CREATE INDEX message_events_message_id ON message_events (message_id, id)",
    """
    ALTER TABLE message_events SET (
        autovacuum_vacuum_insert_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02
    )
    """,
    *EVENT_LOG_TRIGGERS,
    "DROP TRIGGER messages_roll_up_changes ON messages",
    "DROP TRIGGER messages_roll_up_deletes ON messages",
    "DROP TRIGGER messages_roll_up_inserts ON messages",
    "DROP FUNCTION messages_roll_up()",
    "DROP TABLE message_rollup_deltas",
    "DROP TABLE message_rollups",
    "DROP FUNCTION message_delivery_bucket(timestamptz, timestamptz)",
    "ALTER TABLE messages DROP COLUMN country",
)

# How far ahead day partitions exist when the migration ends; the service keeps a week ahead.
DAYS_AHEAD = 7


def upgrade() -> None:
    for statement in (*BEFORE_BACKFILL, *ROLLUPS, *PARTITIONS):
        op.execute(statement)
    # Every event received so far stays where it is: the first partition, up to tomorrow (UTC).
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow += timedelta(days=1)
    latest = op.get_bind().execute(text("SELECT max(received_at) FROM message_events_legacy"))
    newest = latest.scalar()
    if newest is not None and newest >= tomorrow:  # a clock ahead: the legacy day covers it
        tomorrow = newest.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        tomorrow += timedelta(days=1)
    bound = tomorrow.isoformat()
    op.execute(
        f"ALTER TABLE message_events_legacy ADD CONSTRAINT message_events_legacy_range "
        f"CHECK (received_at < '{bound}') NOT VALID"
    )
    op.execute("ALTER TABLE message_events_legacy VALIDATE CONSTRAINT message_events_legacy_range")
    op.execute(
        f"ALTER TABLE message_events ATTACH PARTITION message_events_legacy "
        f"FOR VALUES FROM (MINVALUE) TO ('{bound}')"
    )
    op.execute("ALTER TABLE message_events_legacy DROP CONSTRAINT message_events_legacy_range")
    op.execute(
        f"INSERT INTO event_partitions (name, since, until) "
        f"VALUES ('message_events_legacy', NULL, '{bound}')"
    )
    for day in range(DAYS_AHEAD + 1):
        since = tomorrow + timedelta(days=day)
        until = since + timedelta(days=1)
        name = f"message_events_{since:%Y%m%d}"
        op.execute(
            f"CREATE TABLE {name} PARTITION OF message_events "
            f"FOR VALUES FROM ('{since.isoformat()}') TO ('{until.isoformat()}') "
            f"WITH (autovacuum_vacuum_insert_scale_factor = 0.02, "
            f"autovacuum_analyze_scale_factor = 0.02)"
        )
        op.execute(
            f"INSERT INTO event_partitions (name, since, until) "
            f"VALUES ('{name}', '{since.isoformat()}', '{until.isoformat()}')"
        )


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
