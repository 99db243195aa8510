"""The data directory and its secrets: another user's directory, file or symlink is refused."""

import os
from pathlib import Path

import pytest

from status_tracker import api_keys
from status_tracker.private_files import UnsafePath

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")


def planted(data_dir: Path, key: str = "st_planted") -> Path:
    data_dir.mkdir()
    (data_dir / api_keys.KEY_FILE).write_text(key + "\n")
    return data_dir


def test_a_data_directory_others_can_write_is_refused_not_adopted(tmp_path: Path):
    data_dir = planted(tmp_path / "data")
    data_dir.chmod(0o777)
    with pytest.raises(UnsafePath, match="writable by other users"):
        api_keys.load_or_create(data_dir)


@as_root
def test_a_data_directory_of_another_user_is_refused_not_adopted(tmp_path: Path):
    data_dir = planted(tmp_path / "data")
    os.chown(data_dir, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="belongs to another user"):
        api_keys.load_or_create(data_dir)


@as_root
def test_a_key_file_of_another_user_is_refused_not_adopted(tmp_path: Path):
    data_dir = planted(tmp_path / "data")
    os.chown(data_dir / api_keys.KEY_FILE, NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match="belongs to another user"):
        api_keys.load_or_create(data_dir)


def test_a_symlinked_key_file_is_neither_read_nor_written_through(tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    precious = tmp_path / "precious"
    precious.write_text("not a key")
    (data_dir / api_keys.KEY_FILE).symlink_to(precious)
    with pytest.raises(UnsafePath, match="cannot be read safely"):
        api_keys.load_or_create(data_dir)
    assert precious.read_text() == "not a key"


def test_a_key_is_made_once_private_and_then_kept(tmp_path: Path):
    key, created = api_keys.load_or_create(tmp_path / "new" / "data")
    assert created
    assert (tmp_path / "new" / "data" / api_keys.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert api_keys.load_or_create(tmp_path / "new" / "data") == (key, False)
