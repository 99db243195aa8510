"""Reconciliation passes and the discrepancies they found.

Revision ID: 2026_11_24_reconciliations
Revises: 2026_11_24_query
Create Date: 2026-11-24
"""

from alembic import op

revision = "2026_11_24_reconciliations"
down_revision = "2026_11_24_query"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    """
    CREATE TABLE reconciliations (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        since timestamptz NOT NULL,
        until timestamptz NOT NULL,
        dry_run boolean NOT NULL,
        state text NOT NULL DEFAULT 'running'
            CHECK (state IN ('running', 'finished', 'failed', 'interrupted')),
        counts jsonb NOT NULL DEFAULT '{}',
        errors jsonb NOT NULL DEFAULT '[]',
        duration_seconds double precision
    )
    """,
    """
    CREATE TABLE discrepancies (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        reconciliation_id bigint NOT NULL REFERENCES reconciliations (id) ON DELETE CASCADE,
        kind text NOT NULL,
        resolved boolean NOT NULL,
        message_id uuid,
        sid text,
        detail jsonb NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX discrepancies_reconciliation ON discrepancies (reconciliation_id, resolved)",
    # Stale messages: outbound, with a SID, not final yet, oldest first.
    "CREATE INDEX messages_not_final ON messages (created_at) WHERE sid IS NOT NULL "
    "AND status NOT IN ('canceled', 'failed', 'undelivered', 'partially_delivered', "
    "'delivered', 'read', 'received')",
)

DOWNGRADE = (
    "DROP INDEX messages_not_final",
    "DROP TABLE discrepancies",
    "DROP TABLE reconciliations",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
