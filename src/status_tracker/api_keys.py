"""API keys for the `/v1` API: configured, or made once and kept in the data directory."""

import hmac
import secrets
from pathlib import Path

from status_tracker.private_files import ensure_dir, read_secret, write_secret

KEY_FILE = "api-key"


def load_or_create(data_dir: Path) -> tuple[str, bool]:
    """The key kept in `data_dir`, made on first use; the flag says whether it was just made.
    A key file (or directory) that someone else could have written is refused, not adopted."""
    ensure_dir(data_dir)
    path = data_dir / KEY_FILE
    kept = read_secret(path)
    if kept is not None:
        return kept.strip(), False
    key = "st_" + secrets.token_urlsafe(32)
    write_secret(path, key + "\n")
    return key, True


def matches(candidate: str, keys: list[str]) -> bool:
    # Every key is compared, in constant time, so timing tells nothing about which one is close.
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found
