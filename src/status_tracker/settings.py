"""Every setting of the service, read from the environment (or a `.env` file)."""

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Units of a duration written as a number and a letter: 90s, 30m, 12h, 400d.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="PostgreSQL URL. Unset: an embedded cluster under the data directory.",
    )
    data_dir: Path = Field(
        default=Path(".status-tracker"), validation_alias="STATUS_TRACKER_DATA_DIR"
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        validation_alias="STATUS_TRACKER_PUBLIC_URL",
        description="The base URL Twilio calls; signatures are checked against it.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias="STATUS_TRACKER_API_KEYS"
    )
    read_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        validation_alias="STATUS_TRACKER_READ_KEYS",
        description="Comma-separated read-only keys for /v1: GET only.",
    )
    secret_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        validation_alias="STATUS_TRACKER_SECRET_KEY",
        description="Fernet keys, comma-separated, newest first, that encrypt the accounts' "
        "secrets at rest. Unset: one made once and kept in the data directory.",
    )
    twilio_account_sid: str | None = Field(default=None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = Field(default=None, validation_alias="TWILIO_AUTH_TOKEN")
    twilio_auth_token_secondary: SecretStr | None = Field(
        default=None, validation_alias="TWILIO_AUTH_TOKEN_SECONDARY"
    )
    twilio_from: str | None = Field(
        default=None,
        validation_alias="TWILIO_FROM",
        description="Default sender for POST /v1/messages.",
    )
    twilio_messaging_service_sid: str | None = Field(
        default=None,
        validation_alias="TWILIO_MESSAGING_SERVICE_SID",
        description="Default Messaging Service for POST /v1/messages.",
    )
    twilio_api_base_url: str | None = Field(
        default=None,
        validation_alias="TWILIO_API_BASE_URL",
        description="Where Twilio's REST API is (a simulator); unset: Twilio itself.",
    )
    twilio_timeout_seconds: float = Field(default=10.0, gt=0, validation_alias="TWILIO_TIMEOUT")
    simulator: bool = Field(
        default=False,
        validation_alias="STATUS_TRACKER_SIMULATOR",
        description="Set by `status-tracker serve` when it runs the built-in Twilio simulator.",
    )
    twilio_webhook_shared_key: SecretStr | None = Field(
        default=None,
        validation_alias="TWILIO_WEBHOOK_SHARED_KEY",
        description="Secret of a Twilio webhook shared key (HMAC-SHA256 signatures), "
        "whatever key id the request names.",
    )
    twilio_webhook_shared_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        validation_alias="TWILIO_WEBHOOK_SHARED_KEYS",
        description="Webhook shared keys by key id (`id=secret,id2=secret2`): a request is "
        "checked with the key its X-Twilio-Webhooks-Signature-Settings names, so that two keys "
        "overlap during a rotation.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024, gt=0, validation_alias="STATUS_TRACKER_MAX_BODY_BYTES"
    )
    event_streams_max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        validation_alias="STATUS_TRACKER_EVENT_STREAMS_MAX_BODY_BYTES",
        description="Largest Event Streams batch accepted, in bytes; larger: 413.",
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        validation_alias="STATUS_TRACKER_BODY_TIMEOUT",
        description="Seconds a webhook body may take to arrive; slower: 408.",
    )
    db_pool_min_size: int = Field(default=1, ge=0, validation_alias="DB_POOL_MIN_SIZE")
    db_pool_max_size: int = Field(default=10, ge=1, validation_alias="DB_POOL_MAX_SIZE")
    db_timeout_seconds: float = Field(
        default=5.0, gt=0, validation_alias="STATUS_TRACKER_DB_TIMEOUT"
    )
    export_stall_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias="STATUS_TRACKER_EXPORT_STALL_TIMEOUT",
        description="Seconds an export waits for a client that stopped reading before aborting.",
    )
    ingest_max_batch: int = Field(
        default=256, ge=1, validation_alias="STATUS_TRACKER_INGEST_MAX_BATCH"
    )
    ingest_max_pending: int = Field(
        default=5000,
        ge=1,
        validation_alias="STATUS_TRACKER_INGEST_MAX_PENDING",
        description="Callbacks waiting for the database, past which new ones get 503 at once.",
    )
    ingest_flushers: int = Field(
        default=1,
        ge=1,
        validation_alias="STATUS_TRACKER_INGEST_FLUSHERS",
        description="Batches a worker commits at once. One is enough: while it commits, the next "
        "batch grows. More let smaller batches overlap, which pays only when the database is far.",
    )
    stale_after: timedelta = Field(
        default=timedelta(hours=12),
        validation_alias="STATUS_TRACKER_STALE_AFTER",
        description="A message not final this long after it was sent is fetched from Twilio "
        "(seconds, or ISO 8601 like PT12H).",
    )
    reconcile_interval_seconds: float = Field(
        default=3600,
        ge=0,
        validation_alias="STATUS_TRACKER_RECONCILE_INTERVAL",
        description="Seconds between the server's reconciliation passes; 0 disables them.",
    )
    reconcile_concurrency: int = Field(
        default=8, ge=1, validation_alias="STATUS_TRACKER_RECONCILE_CONCURRENCY"
    )
    redact_numbers: Literal["none", "last4"] = Field(
        default="none",
        validation_alias="STATUS_TRACKER_REDACT_NUMBERS",
        description="last4: phone numbers are stored without their last four digits.",
    )
    store_bodies: bool = Field(
        default=True,
        validation_alias="STATUS_TRACKER_STORE_BODIES",
        description="false: message bodies are never stored.",
    )
    retention: timedelta | None = Field(
        default=None,
        validation_alias="STATUS_TRACKER_RETENTION",
        description="How long messages and their events are kept (e.g. 400d); unset: forever.",
    )
    body_retention: timedelta | None = Field(
        default=None,
        validation_alias="STATUS_TRACKER_BODY_RETENTION",
        description="How long bodies and media URLs are kept (e.g. 30d); unset: as messages.",
    )
    archive_dir: Path | None = Field(
        default=None,
        validation_alias="STATUS_TRACKER_ARCHIVE_DIR",
        description="Where each day of events is written before retention drops it.",
    )
    auto_reply: str | None = Field(
        default=None,
        validation_alias="STATUS_TRACKER_AUTO_REPLY",
        description="Reply to inbound messages with this text; $from and $body are replaced.",
    )
    access_log: bool = Field(
        default=False,
        validation_alias="STATUS_TRACKER_ACCESS_LOG",
        description="Log every HTTP request (costs about a tenth of ingest throughput).",
    )
    log_level: str = Field(default="INFO", validation_alias="STATUS_TRACKER_LOG_LEVEL")
    webhooks_allow_private: bool = Field(
        default=False,
        validation_alias="STATUS_TRACKER_WEBHOOKS_ALLOW_PRIVATE",
        description="true: webhook endpoints may be on loopback, link-local or private addresses.",
    )
    webhooks_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        validation_alias="STATUS_TRACKER_WEBHOOKS_TIMEOUT",
        description="Seconds a webhook endpoint has to answer an attempt.",
    )
    webhooks_concurrency: int = Field(
        default=8,
        ge=1,
        validation_alias="STATUS_TRACKER_WEBHOOKS_CONCURRENCY",
        description="Webhook attempts in flight at once, per worker process.",
    )
    webhooks_retry_scale: float = Field(
        default=1.0,
        gt=0,
        validation_alias="STATUS_TRACKER_WEBHOOKS_RETRY_SCALE",
        description="Multiplies the webhook retry schedule and the 5 days after which a failing "
        "endpoint is disabled (drills and tests shorten them).",
    )
    webhooks_retention_seconds: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        validation_alias="STATUS_TRACKER_WEBHOOKS_RETENTION",
        description="Seconds outbox events (and their deliveries) are kept, then pruned.",
    )
    metrics: bool = Field(
        default=True,
        validation_alias="STATUS_TRACKER_METRICS",
        description="Serve Prometheus metrics at /metrics; false: none recorded or served.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        validation_alias="STATUS_TRACKER_METRICS_TOKEN",
        description="Bearer token /metrics requires; unset: /metrics is open, like /healthz.",
    )

    @field_validator("api_keys", "read_keys", "secret_key", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        # The environment gives "key1,key2"; code may pass a list.
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("twilio_webhook_shared_keys", mode="before")
    @classmethod
    def _split_shared_keys(cls, value: Any) -> Any:
        # The environment gives "id=secret,id2=secret2"; code may pass a dict.
        if not isinstance(value, str):
            return value
        keys = {}
        for pair in value.split(","):
            key_id, equals, secret = pair.strip().partition("=")
            if not pair.strip():
                continue
            if not (equals and key_id.strip() and secret.strip()):
                raise ValueError(
                    "TWILIO_WEBHOOK_SHARED_KEYS takes id=secret pairs, comma-separated"
                )
            keys[key_id.strip()] = secret.strip()
        return keys

    @property
    def webhook_shared_keys(self) -> dict[str, str]:
        return {
            key_id: key.get_secret_value()
            for key_id, key in self.twilio_webhook_shared_keys.items()
        }

    @field_validator("stale_after", "retention", "body_retention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        # The environment gives "43200" (seconds), "12h" or "400d"; pydantic reads only ISO 8601
        # durations from text.
        if not isinstance(value, str):
            return value
        number, unit = (value[:-1], value[-1]) if value[-1:] in DURATION_UNITS else (value, "s")
        if number.replace(".", "", 1).isdigit():
            return timedelta(seconds=float(number) * DURATION_UNITS[unit])
        return value

    @property
    def signing_tokens(self) -> list[str]:
        """Auth tokens a legacy (HMAC-SHA1) signature may be made with, primary first."""
        tokens = (self.twilio_auth_token, self.twilio_auth_token_secondary)
        return [t.get_secret_value() for t in tokens if t is not None]
