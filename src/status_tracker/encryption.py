"""Secrets at rest (accounts' auth tokens and API key secrets), encrypted with Fernet.

The keys come from STATUS_TRACKER_SECRET_KEY, comma-separated, newest first: the first encrypts,
every one decrypts (a MultiFernet), so a new key can be put in front of the old one, the stored
secrets re-encrypted with `status-tracker accounts reencrypt`, and the old key dropped. Without
the setting, a key is made once and kept in the data directory (mode 0600), as the API key is.
"""

from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from status_tracker.private_files import ensure_dir, read_secret, write_secret
from status_tracker.settings import Settings

KEY_FILE = "secret-key"


class UndecryptableSecret(RuntimeError):
    """A stored secret that none of the configured keys opens: the key was changed without
    keeping the old one."""


class SecretBox:
    """Encrypts with the first key, decrypts with any. `keys` may be a function, called on first
    use: a deployment with no stored account never needs a key (nor a data directory for it)."""

    def __init__(self, keys: list[str] | Callable[[], list[str]]) -> None:
        self._keys = keys
        self._cached: MultiFernet | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "SecretBox":
        if settings.secret_key:
            return cls([key.get_secret_value() for key in settings.secret_key])
        return cls(lambda: [load_or_create_key(settings.data_dir)])

    @property
    def _fernet(self) -> MultiFernet:
        if self._cached is None:
            keys = self._keys() if callable(self._keys) else self._keys
            if not keys:
                raise ValueError("at least one key is needed")
            self._cached = MultiFernet([Fernet(key.encode()) for key in keys])
        return self._cached

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as error:
            raise UndecryptableSecret(
                "a stored secret cannot be decrypted with STATUS_TRACKER_SECRET_KEY: keep the "
                "old key after the new one until `status-tracker accounts reencrypt` has run"
            ) from error

    def reencrypt(self, token: str) -> str:
        """`token` encrypted again with the first key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as error:
            raise UndecryptableSecret("a stored secret cannot be decrypted") from error


def load_or_create_key(data_dir: Path) -> str:
    """The key kept in `data_dir`, made on first use. A key file someone else could have
    written is refused, not adopted."""
    ensure_dir(data_dir)
    path = data_dir / KEY_FILE
    kept = read_secret(path)
    if kept is not None:
        return kept.strip()
    key = Fernet.generate_key().decode()
    try:
        write_secret(path, key + "\n")
    except Exception:
        # Another process (a second worker) made it first: use theirs.
        kept = read_secret(path)
        if kept is None:
            raise
        return kept.strip()
    return key
