"""Twilio Event Streams: the event's own time, and the CloudEvents already taken.

- `message_events.occurred_at`: when Twilio says the event happened (an Event Streams event's
  `timestamp`), beside `received_at`, when this service received it. Callbacks carry no event
  time: null for them and for every existing row (a new nullable column rewrites no row).
- `stream_events`: one row per CloudEvent `id` taken from an Event Streams batch, claimed in the
  batch's transaction, so that a redelivered batch (Event Streams delivers at least once, and
  retries for hours) stores nothing twice. `event` keeps a whole CloudEvent that the event log
  could not hold (an event type this service does not know); null for the others, which are in
  the event log.

Downgrade drops both: the events themselves stay in the event log.

Revision ID: 2026_12_09_event_streams
Revises: 2026_12_08_accounts
Create Date: 2026-12-09
"""

from alembic import op

revision = "2026_12_09_event_streams"
down_revision = "2026_12_08_accounts"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    "ALTER TABLE message_events ADD COLUMN occurred_at timestamptz",
    """
    CREATE TABLE stream_events (
        id text PRIMARY KEY,
        type text NOT NULL,
        received_at timestamptz NOT NULL,
        event jsonb
    )
    """,
    # Ids older than Twilio's 4 hours of redelivery are forgotten (retention.maintain), read by
    # time: a BRIN index costs next to nothing on insert.
    "CREATE INDEX stream_events_received_at ON stream_events USING brin (received_at)",
    """
    ALTER TABLE stream_events SET (
        autovacuum_vacuum_insert_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02
    )
    """,
)

DOWNGRADE = (
    "DROP TABLE stream_events",
    "ALTER TABLE message_events DROP COLUMN occurred_at",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
