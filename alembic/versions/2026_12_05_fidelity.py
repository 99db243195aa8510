"""Twilio fidelity: resumable reconciliation passes, and opt-outs scoped to a sender.

- `reconciliations.resume`: where a pass stopped listing Twilio's messages (the URL of the next
  page of its window listing, with Twilio's keyset `PageToken`) and the listed SIDs it still
  held. Written after each page, so a pass that failed (Twilio answering 429/5xx past the retry
  budget) or crashed leaves it behind; null once the listing is complete. Existing rows: null.
- `opt_outs.scope`: an opt-out holds for the sender it was sent to, as at Twilio: a Messaging
  Service SID (`MG…`, the service's whole pool) or the SHA-256 of the sender number. Rows stored
  before were enforced for every sender: they keep that, as scope `*`.

Downgrade drops both. Opt-outs then collapse to one row per number: an opt-out of any scope is
kept over an opt-in (so nobody who said STOP is messaged again), the latest first.

Revision ID: 2026_12_05_fidelity
Revises: 2026_12_04_layout
Create Date: 2026-12-05
"""

from alembic import op

revision = "2026_12_05_fidelity"
down_revision = "2026_12_04_layout"
branch_labels = None
depends_on = None

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    "ALTER TABLE reconciliations ADD COLUMN resume jsonb",
    "ALTER TABLE opt_outs ADD COLUMN scope text NOT NULL DEFAULT '*'",
    "ALTER TABLE opt_outs ALTER COLUMN scope DROP DEFAULT",
    "ALTER TABLE opt_outs DROP CONSTRAINT opt_outs_pkey",
    "ALTER TABLE opt_outs ADD PRIMARY KEY (number_sha256, scope)",
)

DOWNGRADE = (
    """
    DELETE FROM opt_outs o WHERE EXISTS (
        SELECT 1 FROM opt_outs other
        WHERE other.number_sha256 = o.number_sha256
          AND (other.opted_out, other.changed_at, other.scope)
              > (o.opted_out, o.changed_at, o.scope)
    )
    """,
    "ALTER TABLE opt_outs DROP CONSTRAINT opt_outs_pkey",
    "ALTER TABLE opt_outs DROP COLUMN scope",
    "ALTER TABLE opt_outs ADD PRIMARY KEY (number_sha256)",
    "ALTER TABLE reconciliations DROP COLUMN resume",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
