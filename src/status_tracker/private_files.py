"""The data directory and the secrets in it: ours alone, and never reached through a symlink.

Another local user who prepares the directory (or plants a file or a symlink in it) before the
service starts must not get their API key or password adopted, nor have us write or chown a file
through their symlink. So a directory or file is used only if it belongs to us (or to the user
the embedded server runs as) and nobody else can write to it, and secrets are created with
`O_EXCL | O_NOFOLLOW`.
"""

import os
import stat
from pathlib import Path


class UnsafePath(RuntimeError):
    pass


def _check(path: Path, info: os.stat_result, owners: tuple[int, ...]) -> None:
    if info.st_uid not in owners:
        raise UnsafePath(
            f"{path} belongs to another user (uid {info.st_uid}), so its contents cannot be "
            "trusted; remove it, or choose another STATUS_TRACKER_DATA_DIR."
        )
    if info.st_mode & 0o022:
        raise UnsafePath(
            f"{path} is writable by other users (mode {stat.filemode(info.st_mode)}); "
            f"run `chmod go-w {path}` if you trust what is in it, or remove it."
        )


def ensure_dir(path: Path, *owners: int) -> None:
    """Create `path` (and its parents) if missing; refuse it if it is a symlink, or belongs to
    anyone but us (or `owners`), or is writable by others. Parents are left as they are."""
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as error:
        raise UnsafePath(
            f"cannot create the data directory {path}: {error.strerror}; choose another "
            "with STATUS_TRACKER_DATA_DIR."
        ) from error
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is not a directory (a symlink?); remove it.")
    _check(path, info, (os.geteuid(), *owners))


def read_secret(path: Path) -> str | None:
    """The text of a file we made, or None if there is none; refused if it is a symlink, belongs
    to someone else or others can write it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UnsafePath(f"{path} cannot be read safely ({error.strerror}); remove it.") from error
    with os.fdopen(descriptor) as file:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{path} is not a regular file; remove it.")
        _check(path, info, (os.geteuid(),))
        return file.read()


def write_secret(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Create `path` (mode 0600, never through a symlink, never over an existing file), then
    hand it to `owner` (uid, gid) if given."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise UnsafePath(f"cannot create {path} safely ({error.strerror}); remove it.") from error
    with os.fdopen(descriptor, "w") as file:
        if owner is not None:
            os.fchown(descriptor, *owner)
        file.write(text)
