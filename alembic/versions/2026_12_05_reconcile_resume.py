"""Where a reconciliation pass stopped listing Twilio's messages, so the next one resumes there.

`resume` holds the URL of the next page of the pass's window listing (Twilio's keyset
`PageToken` in it), and the SIDs it listed that the store lacked and had not settled yet. It is
written after each page, so a pass that failed (Twilio answering 429/5xx past the retry budget)
or crashed leaves it behind; null once the listing is complete. Existing rows keep null.

Revision ID: 2026_12_05_reconcile_resume
Revises: 2026_12_04_layout
Create Date: 2026-12-05
"""

from alembic import op

revision = "2026_12_05_reconcile_resume"
down_revision = "2026_12_04_layout"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE reconciliations ADD COLUMN resume jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE reconciliations DROP COLUMN resume")
