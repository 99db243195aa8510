"""Many Twilio accounts in one deployment, and API keys stored hashed.

- `accounts`: one row per Twilio account (or subaccount). Its auth tokens (primary, secondary)
  and API key secret are Fernet tokens (`encryption.py`), never clear text; `updated_at` tells
  the workers' in-memory directories which rows to reload.
- `api_keys`: keys made by `status-tracker keys create` or `POST /v1/keys`, by the SHA-256 of
  the key (never the key), with their scopes and, optionally, the accounts they are bound to.
- `messages_account`: a bound key's lists, stats and exports read one account's index range.
- `reconciliations.account_sid`: the stored account a pass reconciled (null: the default
  account of the environment, as every pass before).

No existing row changes: messages keep the `account_sid` Twilio reported. Downgrade drops the
index, the column and both tables (the accounts' credentials go with them).

Revision ID: 2026_12_08_accounts
Revises: 2026_12_06_months
Create Date: 2026-12-08
"""

from alembic import op

revision = "2026_12_08_accounts"
down_revision = "2026_12_06_months"
branch_labels = None
depends_on = None

UPGRADE = (
    """
    CREATE TABLE accounts (
        sid text PRIMARY KEY CHECK (sid ~ '^AC[0-9a-f]{32}$'),
        friendly_name text,
        auth_token text NOT NULL,
        auth_token_secondary text,
        api_key_sid text,
        api_key_secret text,
        default_from text,
        messaging_service_sid text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE api_keys (
        id uuid PRIMARY KEY,
        name text NOT NULL,
        key_sha256 bytea NOT NULL UNIQUE,
        prefix text NOT NULL,
        scopes text[] NOT NULL,
        account_sids text[],
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz
    )
    """,
    "CREATE INDEX messages_account ON messages (account_sid, created_at) "
    "WHERE account_sid IS NOT NULL",
    "ALTER TABLE reconciliations ADD COLUMN account_sid text",
)

DOWNGRADE = (
    "ALTER TABLE reconciliations DROP COLUMN account_sid",
    "DROP INDEX messages_account",
    "DROP TABLE api_keys",
    "DROP TABLE accounts",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
