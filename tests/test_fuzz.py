"""Fuzzing: the API from its own OpenAPI schema, and the webhook with odd, validly signed forms."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from twilio.request_validator import RequestValidator

from status_tracker.app import create_app
from status_tracker.callbacks import Form
from status_tracker.embedded_postgres import EmbeddedPostgres
from status_tracker.settings import Settings
from tests.conftest import Server, Simulator, create_database, sending_environment
from tests.support import API_KEY, AUTH_TOKEN, PUBLIC_URL, STATUS_PATH, new_sid


@pytest.fixture(scope="module")
def fuzzed_service(
    postgres: EmbeddedPostgres, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One real service (and simulator) for every generated request of this module."""
    database_url = asyncio.run(create_database(postgres))
    directory: Path = tmp_path_factory.mktemp("fuzz")
    simulator = Simulator(
        directory, "--delay-min", "0", "--delay-max", "0.05", "--create-timeout", "2"
    )
    environment = sending_environment(database_url, directory, simulator.url)
    try:
        with Server(environment, directory) as server:
            yield server
            logged = server.log.read_text()
    finally:
        simulator.close()
    assert "Traceback" not in logged


# The schema the service publishes; building the app connects to nothing.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(database_url=SecretStr("postgresql://unused/db"))).openapi()
).exclude(path="/v1/events/stream")  # never ends by design: tests/test_webhook_durability.py


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_generated_request_makes_the_service_fail(
    case: schemathesis.Case, fuzzed_service: Server
) -> None:
    case.call_and_validate(
        base_url=fuzzed_service.url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        checks=[not_a_server_error],
        timeout=30,
    )


texts = st.text(st.characters(codec="utf-8"), max_size=40)
names = st.sampled_from(["MessageSid", "MessageStatus", "ErrorCode", "To", "RawDlrDoneDate",
                         "EventType", "From"]) | texts  # fmt: skip
values = (
    texts
    | st.sampled_from(["delivered", "sent", "READ", "30003", "2611241130", "", "SM" + "a" * 32])
    | st.builds(lambda: new_sid())
    | st.text(max_size=5000)
)
forms = st.lists(st.tuples(names, values), max_size=12)
raw_bodies = st.binary(max_size=300)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pairs=forms, raw=raw_bodies, use_raw=st.booleans())
async def test_odd_signed_forms_are_refused_cleanly_or_stored(client, db, pairs, raw, use_raw):
    """Odd encodings, repeated keys, huge and non-UTF-8 values: 204, 400 or 413, never a 500;
    and a row only for what was accepted."""
    before = await db.fetchval("SELECT count(*) FROM message_events")
    if use_raw:
        body = raw
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + STATUS_PATH, {})
    else:
        body = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode()
        signature = RequestValidator(AUTH_TOKEN).compute_signature(
            PUBLIC_URL + STATUS_PATH, Form(pairs)
        )
    response = await client.post(
        STATUS_PATH,
        content=body,
        headers={
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    after = await db.fetchval("SELECT count(*) FROM message_events")
    assert response.status_code in (204, 400, 403, 413), response.text
    if response.status_code != 204:
        assert response.headers["content-type"] == "application/problem+json"
    assert after - before == (1 if response.status_code == 204 else 0)
