"""API keys for the `/v1` API: configured, or made once and kept in the data directory."""

import hmac
import secrets
from pathlib import Path

KEY_FILE = "api-key"


def load_or_create(data_dir: Path) -> tuple[str, bool]:
    """The key kept in `data_dir`, made on first use; the flag says whether it was just made."""
    path = data_dir / KEY_FILE
    if path.exists():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "st_" + secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key, True


def matches(candidate: str, keys: list[str]) -> bool:
    # Every key is compared, in constant time, so timing tells nothing about which one is close.
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found
