"""Daily rollups beside the hourly ones, so that a month of statistics reads 30 rows per value
instead of 720.

`message_rollups_daily` holds what `message_rollups` holds, summed by day (UTC). The service
folds each delta into both in one statement; filled here from the hourly rollups.

Revision ID: 2026_12_12_daily_rollups
Revises: 2026_12_07_webhooks
Create Date: 2026-12-12
"""

from alembic import op

revision = "2026_12_12_daily_rollups"
down_revision = "2026_12_07_webhooks"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    """
    CREATE TABLE message_rollups_daily (
        day timestamptz NOT NULL,
        account_sid text,
        breakdown text NOT NULL,
        value text,
        status text NOT NULL,
        error_code integer,
        delivery_bucket smallint,
        messages bigint NOT NULL,
        CONSTRAINT message_rollups_daily_key UNIQUE NULLS NOT DISTINCT (
            breakdown, day, value, account_sid, status, error_code, delivery_bucket
        )
    )
    """,
    """
    INSERT INTO message_rollups_daily (day, account_sid, breakdown, value, status, error_code,
                                       delivery_bucket, messages)
    SELECT date_trunc('day', hour, 'UTC'), account_sid, breakdown, value, status, error_code,
           delivery_bucket, sum(messages)
    FROM message_rollups GROUP BY 1, 2, 3, 4, 5, 6, 7
    """,
)

DOWNGRADE = ("DROP TABLE message_rollups_daily",)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
