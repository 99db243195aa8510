"""The settings a user can read about (README, .env.example) and pass (docker-compose.yml) are
exactly those of the Settings class."""

import re
from pathlib import Path
from typing import Any

import yaml

from status_tracker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# Set by `status-tracker serve` for its own workers, not by users.
INTERNAL = {"STATUS_TRACKER_SIMULATOR"}
SECRETS = {
    "STATUS_TRACKER_API_KEYS",
    "STATUS_TRACKER_READ_KEYS",
    "STATUS_TRACKER_SECRET_KEY",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_AUTH_TOKEN_SECONDARY",
    "TWILIO_WEBHOOK_SHARED_KEYS",
    "TWILIO_WEBHOOK_SHARED_KEY",
    "STATUS_TRACKER_METRICS_TOKEN",
}


def settings_names() -> set[str]:
    return {str(field.validation_alias) for field in Settings.model_fields.values()} - INTERNAL


def readme_table() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    found = (re.fullmatch(r"#? ?([A-Z][A-Z0-9_]+)=(.*)", line) for line in lines)
    return {match[1]: match[2] for match in found if match}


def test_readme_table_documents_every_setting():
    assert readme_table() == settings_names()


def test_env_example_names_every_setting():
    assert set(env_example()) == settings_names()


def test_env_example_values_are_the_defaults():
    """Where a setting has a default, .env.example shows it (the others show a sample)."""
    example = env_example()
    shown = {}
    for name, field in Settings.model_fields.items():
        alias = str(field.validation_alias)
        default = field.get_default(call_default_factory=True)
        if alias in INTERNAL or default in (None, [], {}) or alias == "STATUS_TRACKER_PUBLIC_URL":
            continue
        parsed = Settings.model_validate({alias: example[alias]}, by_alias=True)
        shown[alias] = (getattr(parsed, name), default)
    assert len(shown) > 15
    assert {alias: pair for alias, pair in shown.items() if pair[0] != pair[1]} == {}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_passes_every_documented_setting_from_the_environment():
    environment = compose()["services"]["app"]["environment"]
    documented = readme_table()
    assert documented <= set(environment)
    for name in documented:
        assert str(environment[name]).startswith(f"${{{name}"), (name, environment[name])


def test_compose_has_no_default_secret():
    environment = compose()["services"]["app"]["environment"]
    for name in SECRETS:
        assert environment[name] == f"${{{name}:-}}", (name, environment[name])


def test_docker_build_context_leaves_out_local_state_and_secrets():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".status-tracker", ".git", ".env", "**/__pycache__"} <= ignored
