"""API keys: stored hashed and shown once, with scopes; the environment's keys as admin and
read-only keys."""

import hashlib
import logging

from pydantic import SecretStr

from tests.conftest import app_client
from tests.support import API_KEY

READ_KEY = "st_read_only_key_0123456789"
SEND = {"to": "+14155550100", "body": "hello"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_created_key_is_shown_once_stored_hashed_and_never_logged(client, db, caplog):
    caplog.set_level(logging.DEBUG)
    created = await client.post("/v1/keys", json={"name": "dashboard", "scopes": ["read"]})
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith(created.json()["prefix"])
    assert key not in (await client.get("/v1/keys")).text
    rows = await db.fetch("SELECT * FROM api_keys")
    assert key not in repr([dict(row) for row in rows])
    assert bytes(rows[0]["key_sha256"]) == hashlib.sha256(key.encode()).digest()

    assert (await client.get("/v1/messages", headers=bearer(key))).status_code == 200
    refused = await client.post("/v1/messages", json=SEND, headers=bearer(key))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/keys", headers=bearer(key))).status_code == 403

    revoked = await client.delete(f"/v1/keys/{created.json()['id']}")
    assert revoked.json()["revoked_at"] is not None
    assert (await client.get("/v1/messages", headers=bearer(key))).status_code == 401
    assert key not in caplog.text


async def test_scopes_grant_what_they_name_and_no_more(client):
    async def key_with(*scopes: str) -> dict[str, str]:
        created = await client.post("/v1/keys", json={"name": "k", "scopes": list(scopes)})
        return bearer(created.json()["key"])

    sender, admin = await key_with("send"), await key_with("admin")
    assert (await client.get("/v1/messages", headers=sender)).status_code == 200
    # Twilio is not configured here: past the scope check, the send is answered 503.
    assert (await client.post("/v1/messages", json=SEND, headers=sender)).status_code == 503
    assert (await client.post("/v1/keys", json={"name": "x"}, headers=sender)).status_code == 403
    assert (await client.post("/v1/keys", json={"name": "x"}, headers=admin)).status_code == 201


async def test_a_key_bound_to_accounts_cannot_be_an_admin_key(client):
    bound_admin = {"name": "x", "scopes": ["admin"], "account_sids": ["AC" + "a" * 32]}
    assert (await client.post("/v1/keys", json=bound_admin)).status_code == 422


async def test_read_keys_of_the_environment_read_but_change_nothing(settings):
    with_read_keys = settings.model_copy(update={"read_keys": [SecretStr(READ_KEY)]})
    async with app_client(with_read_keys) as client:
        reader = bearer(READ_KEY)
        assert (await client.get("/v1/messages", headers=reader)).status_code == 200
        assert (await client.get("/v1/stats", headers=reader)).status_code == 200
        for method, path in (("POST", "/v1/messages"), ("DELETE", "/v1/messages/SM" + "0" * 32),
                             ("POST", "/v1/keys"), ("POST", "/v1/accounts")):  # fmt: skip
            refused = await client.request(method, path, json=SEND, headers=reader)
            assert refused.status_code == 403, (method, path)
            assert refused.headers["content-type"] == "application/problem+json"
        # STATUS_TRACKER_API_KEYS keep working, as admin keys.
        assert (await client.get("/v1/keys", headers=bearer(API_KEY))).status_code == 200
