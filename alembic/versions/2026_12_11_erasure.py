"""Erasure of a phone number, and a stored event count for a fast export.

- Erasure (`repository.erase_number`) is the one change the append-only event log allows
  besides re-linking: within a transaction that sets `status_tracker.erasure = on` (SET LOCAL,
  so it ends with the transaction), an event's `fields` and `query` may be rewritten (personal
  values blanked). Every other column stays as it was, and no event is ever deleted, erasure
  or not.
- `erase_number_in(document, pattern, personal_keys)`: a JSON document with every match of
  `pattern` in its strings replaced by `<erased>` (a JSON number that matches becomes that
  string), and the members whose key matches `personal_keys` (bodies, names) dropped, at any
  depth. The rest of its structure is kept.
- `erasures`: the audit of each erasure. The number is kept only as its SHA-256
  (privacy.number_sha256 of its bare E.164 form), with who asked and how many rows of each
  table were changed.
- `messages.event_count`: how many events the message has. The export reported it with a
  count per message, about 5,000 messages a second; every statement that appends or re-links
  an event keeps this column instead (in the same statement, no extra row version). Existing
  messages are left without one (null): counting them here would rewrite every row of
  `messages` and every index entry, many minutes on a large store with the service down; the
  export counts their events as it did. No event is touched.

Revision ID: 2026_12_11_erasure
Revises: 2026_12_10_console
Create Date: 2026-12-11
"""

from alembic import op

revision = "2026_12_11_erasure"
down_revision = "2026_12_10_console"
branch_labels = None
depends_on = None

APPEND_ONLY = """
    CREATE OR REPLACE FUNCTION message_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - 'message_id' = to_jsonb(OLD) - 'message_id' THEN
            IF NOT EXISTS (SELECT 1 FROM messages WHERE id = NEW.message_id) THEN
                RAISE EXCEPTION 'an event can only be re-linked to a message that exists'
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN NEW;
        END IF;{erasure}
        RAISE EXCEPTION 'message_events is append-only';
    END
    $$
"""
# Only personal values may go: fields and query, nothing else, and only in an erasure.
ERASURE_EXCEPTION = """
        IF TG_OP = 'UPDATE' AND current_setting('status_tracker.erasure', true) = 'on'
           AND to_jsonb(NEW) - 'fields' - 'query' = to_jsonb(OLD) - 'fields' - 'query' THEN
            RETURN NEW;
        END IF;"""

# One statement per string: asyncpg prepares each, and a prepared statement holds only one.
UPGRADE = (
    APPEND_ONLY.format(erasure=ERASURE_EXCEPTION),
    """
    CREATE FUNCTION erase_number_in(document jsonb, pattern text, personal_keys text)
    RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE jsonb_typeof(document)
            WHEN 'object' THEN (
                SELECT coalesce(
                    jsonb_object_agg(key, erase_number_in(value, pattern, personal_keys)), '{}')
                FROM jsonb_each(document)
                WHERE personal_keys IS NULL OR key !~ personal_keys)
            WHEN 'array' THEN (
                SELECT coalesce(
                    jsonb_agg(erase_number_in(value, pattern, personal_keys) ORDER BY n), '[]')
                FROM jsonb_array_elements(document) WITH ORDINALITY AS item(value, n))
            WHEN 'string' THEN
                to_jsonb(regexp_replace(document #>> '{}', pattern, '<erased>', 'g'))
            WHEN 'number' THEN CASE WHEN document::text ~ pattern
                                    THEN to_jsonb('<erased>'::text) ELSE document END
            ELSE document
        END
    $$
    """,
    """
    CREATE TABLE erasures (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        number_sha256 text NOT NULL,
        erased_at timestamptz NOT NULL DEFAULT now(),
        erased_by text,
        counts jsonb NOT NULL
    )
    """,
    "ALTER TABLE messages ADD COLUMN event_count integer",
)

DOWNGRADE = (
    "ALTER TABLE messages DROP COLUMN event_count",
    "DROP TABLE erasures",
    "DROP FUNCTION erase_number_in(jsonb, text, text)",
    APPEND_ONLY.format(erasure=""),
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
