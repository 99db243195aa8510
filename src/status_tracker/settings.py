"""Every setting of the service, read from the environment (or a `.env` file)."""

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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

    @field_validator("api_keys", mode="before")
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

    @field_validator("stale_after", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        # The environment gives "43200"; pydantic reads only ISO 8601 durations from text.
        if isinstance(value, str) and value.replace(".", "", 1).isdigit():
            return float(value)
        return value

    @property
    def signing_tokens(self) -> list[str]:
        """Auth tokens a legacy (HMAC-SHA1) signature may be made with, primary first."""
        tokens = (self.twilio_auth_token, self.twilio_auth_token_secondary)
        return [t.get_secret_value() for t in tokens if t is not None]
