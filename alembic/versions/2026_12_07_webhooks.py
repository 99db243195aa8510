"""Outbound webhooks and the live event stream: endpoints, an outbox, deliveries and attempts.

- `webhook_endpoints`: where to deliver, which event types, an optional `reference` prefix, the
  signing secret (and the previous one, valid until `previous_secret_expires_at`).
- `webhook_events`: the outbox. One row per event a user's systems are told about, written by
  triggers in the very transaction that appends the status report (or finishes the
  reconciliation pass) causing it, so no commit can happen without its events. `sequence`
  numbers a message's events; `xid` (the writing transaction) lets the stream read events in
  commit-safe order. Written only while an endpoint is enabled or a stream is (or was lately)
  connected: otherwise ingest pays one tiny lookup per statement and nothing else.
- `webhook_deliveries`: one per event and endpoint it matches (written by the statement that
  writes the events), claimed by workers with `FOR UPDATE SKIP LOCKED`; `webhook_attempts`:
  every HTTP attempt, with what came back.
- `event_streams`: leases of connected (or lately disconnected) streams.

No existing row changes: a filled store upgrades in the time it takes to create empty tables.
Downgrade drops all of it.

Revision ID: 2026_12_07_webhooks
Revises: 2026_12_11_erasure
Create Date: 2026-12-07
"""

from alembic import op

revision = "2026_12_07_webhooks"
down_revision = "2026_12_11_erasure"
branch_labels = None
depends_on = None

# precedence.FINAL_STATUSES, as of this revision.
_FINAL = (
    "('canceled', 'failed', 'undelivered', 'partially_delivered', 'delivered', 'read', 'received')"
)


def _utc(column: str) -> str:
    """RFC 3339 in UTC with `Z`, as the API writes every time."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


_RECEIVED_AT, _SINCE, _UNTIL, _FINISHED_AT = (
    _utc(column) for column in ("received_at", "NEW.since", "NEW.until", "NEW.finished_at")
)

# Every event the outbox takes is due at once to every enabled endpoint that wants it: written
# by the statement that writes the events (from their CTE `events`), not by a trigger of its own.
_FAN_OUT = """
        INSERT INTO webhook_deliveries (endpoint_id, event_id)
        SELECT endpoint.id, event.id
        FROM events event
        JOIN webhook_endpoints endpoint
          ON endpoint.enabled AND event.type = ANY (endpoint.event_types)
         AND (endpoint.reference_prefix IS NULL
              OR starts_with(coalesce(event.reference, ''), endpoint.reference_prefix))
        ORDER BY event.id, endpoint.id"""

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    """
    CREATE TABLE webhook_endpoints (
        id uuid PRIMARY KEY,
        url text NOT NULL,
        description text,
        event_types text[] NOT NULL,
        reference_prefix text,
        secret text NOT NULL,
        previous_secret text,
        previous_secret_expires_at timestamptz,
        enabled boolean NOT NULL DEFAULT true,
        disabled_reason text,
        failing_since timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE TABLE event_streams (id uuid PRIMARY KEY, expires_at timestamptz NOT NULL)",
    """
    CREATE TABLE webhook_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        type text NOT NULL,
        message_id uuid,
        sequence integer,
        reference text,
        payload jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX webhook_events_stream ON webhook_events (xid, id)",
    "CREATE INDEX webhook_events_message ON webhook_events (message_id, sequence)",
    # Pruning reads old rows by time: a BRIN index costs next to nothing to keep up on insert.
    "CREATE INDEX webhook_events_created_at ON webhook_events USING brin (created_at)",
    # No foreign keys: their checks (a lookup and a row lock per delivery) would cost ingest more
    # than the rest of the fan-out. An endpoint's deliveries go with it (outbox.delete_endpoint),
    # and old deliveries are pruned by age, as old events are.
    """
    CREATE TABLE webhook_deliveries (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        endpoint_id uuid NOT NULL,
        event_id bigint NOT NULL,
        state text NOT NULL DEFAULT 'pending'
            CONSTRAINT webhook_deliveries_state CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        created_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz
    )
    """,
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) "
    "WHERE state = 'pending'",
    "CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id)",
    "CREATE INDEX webhook_deliveries_created_at ON webhook_deliveries USING brin (created_at)",
    """
    CREATE TABLE webhook_attempts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
        attempted_at timestamptz NOT NULL,
        status_code integer,
        latency_ms integer NOT NULL,
        response_excerpt text,
        error text
    )
    """,
    "CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id)",
    # Is anyone listening? Asked once per statement that appends events: two index probes.
    """
    CREATE FUNCTION webhook_listeners_exist() RETURNS boolean LANGUAGE sql STABLE AS $$
        SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled)
            OR EXISTS (SELECT 1 FROM event_streams WHERE expires_at > now())
    $$
    """,
    # One static statement, planned once per connection and kept: planning it afresh for every
    # batch (EXECUTE) cost ingest about as much as running it. The kept plan is not frozen: an
    # ANALYZE of any table it reads (autovacuum's, as the tables grow, or a new day's partition
    # attached) invalidates it, and the next call plans again with the tables as they are then.
    # (Settings on the function instead, `SET enable_seqscan = off`, cost ingest 75 % even when
    # nobody listens.)
    #
    # A report that raised its message's status (as precedence.py ranks it, against every report
    # logged before it) is a `message.status_changed`, and also a `message.final` when it is the
    # first final status; the first `received` of an inbound message is a `message.inbound`. The
    # send's own `pending` record is no change. The message row is locked by the statement that
    # appended the event, so a message's sequence numbers are handed out one transaction at a time.
    f"""
    CREATE FUNCTION webhook_outbox_events() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NOT webhook_listeners_exist() THEN
            RETURN NULL;
        END IF;
        WITH changes AS (
            SELECT e.id AS event_id, e.message_id, e.status, e.error_code, e.source,
                   e.received_at, previous.status AS previous_status, m.sid, m.reference,
                   m.metadata, m.direction, m.to_number, m.from_number, m.body, m.media_urls
            FROM new_events e
            -- A probe of the primary key per event (OFFSET 0 keeps it one), once: as joins
            -- (two), the plan kept for the session hashed the whole of `messages` for every
            -- batch, which halved the statement's rate with an endpoint attached.
            CROSS JOIN LATERAL (
                SELECT created_at, sid, reference, metadata, direction, to_number, from_number,
                       body, media_urls
                FROM messages WHERE id = e.message_id OFFSET 0
            ) m
            LEFT JOIN LATERAL (
                -- Only the partitions of the event log since the message was created, up to
                -- the report's (a day's margin each way for clocks): not the days ahead.
                SELECT p.status, p.status_rank, p.error_code FROM message_events p
                WHERE p.message_id = e.message_id AND p.id < e.id
                  AND p.received_at >= m.created_at - interval '1 day'
                  AND p.received_at < e.received_at + interval '1 day'
                ORDER BY p.status_rank DESC, p.status COLLATE "C" DESC,
                         coalesce(p.error_code, -1) DESC
                LIMIT 1
            ) previous ON true
            WHERE e.status <> 'pending'
              AND (previous.status IS NULL
                   OR (e.status_rank, e.status COLLATE "C", coalesce(e.error_code, -1))
                      > (previous.status_rank, previous.status COLLATE "C",
                         coalesce(previous.error_code, -1)))
        ),
        typed AS (
            SELECT c.*, kind.type FROM changes c
            CROSS JOIN LATERAL (VALUES
                (CASE WHEN c.source = 'inbound' THEN 'message.inbound'
                      ELSE 'message.status_changed' END),
                (CASE WHEN c.source <> 'inbound' AND c.status IN {_FINAL}
                           AND (c.previous_status IS NULL
                                OR c.previous_status NOT IN {_FINAL})
                      THEN 'message.final' END)
            ) AS kind(type)
            WHERE kind.type IS NOT NULL
        ),
        numbered AS (
            SELECT t.*,
                   coalesce((SELECT max(w.sequence) FROM webhook_events w
                             WHERE w.message_id = t.message_id), 0)
                   + row_number() OVER (PARTITION BY t.message_id
                                        ORDER BY t.event_id, t.type DESC) AS sequence
            FROM typed t
        ),
        events AS (
            INSERT INTO webhook_events (type, message_id, sequence, reference, payload)
            SELECT type, message_id, sequence, reference,
               jsonb_build_object(
                   'message_id', message_id, 'sid', sid, 'reference', reference,
                   'metadata', metadata, 'direction', direction, 'to', to_number,
                   'from', from_number, 'status', status, 'previous_status', previous_status,
                   'error_code', error_code, 'sequence', sequence,
                   'event', jsonb_build_object(
                       'id', event_id, 'status', status, 'error_code', error_code,
                       'source', source, 'received_at', {_RECEIVED_AT}))
               || CASE WHEN type = 'message.inbound'
                       THEN jsonb_build_object('body', body, 'media_urls', media_urls)
                       ELSE '{{}}'::jsonb END
            FROM numbered
            ORDER BY message_id, sequence
            RETURNING id, type, reference
        )
        {_FAN_OUT};
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER webhook_outbox_events
        AFTER INSERT ON message_events REFERENCING NEW TABLE AS new_events
        FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_events()
    """,
    f"""
    CREATE FUNCTION webhook_outbox_reconciliation() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF webhook_listeners_exist() THEN
            WITH events AS (
                INSERT INTO webhook_events (type, payload)
                VALUES ('reconciliation.completed', jsonb_build_object(
                    'reconciliation_id', NEW.id, 'state', NEW.state, 'dry_run', NEW.dry_run,
                    'since', {_SINCE}, 'until', {_UNTIL},
                    'finished_at', {_FINISHED_AT},
                    'counts', NEW.counts, 'errors', NEW.errors))
                RETURNING id, type, reference
            )
            {_FAN_OUT};
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER webhook_outbox_reconciliation
        AFTER UPDATE OF finished_at ON reconciliations
        FOR EACH ROW WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL)
        EXECUTE FUNCTION webhook_outbox_reconciliation()
    """,
)

DOWNGRADE = (
    "DROP TRIGGER webhook_outbox_reconciliation ON reconciliations",
    "DROP TRIGGER webhook_outbox_events ON message_events",
    "DROP FUNCTION webhook_outbox_reconciliation()",
    "DROP FUNCTION webhook_outbox_events()",
    "DROP TABLE webhook_attempts",
    "DROP TABLE webhook_deliveries",
    "DROP TABLE webhook_events",
    "DROP FUNCTION webhook_listeners_exist()",
    "DROP TABLE event_streams",
    "DROP TABLE webhook_endpoints",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
