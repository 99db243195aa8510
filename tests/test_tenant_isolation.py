"""Tenant isolation, generated over the OpenAPI schema: a key bound to account A finds nothing of
account B's, on every /v1 path and method, including paths added after this test was written."""

import itertools
import re
from typing import Any

import httpx

from tests.conftest import Server
from tests.support import API_KEY, callback_fields, new_sid, signed

ACCOUNT_A = "AC" + "a" * 32
ACCOUNT_B = "AC" + "b" * 32
TOKEN_A = "token-of-account-a-0123456789"
TOKEN_B = "token-of-account-b-0123456789"
TO_A, TO_B = "+14155550111", "+14155550122"
WRITES = {"post", "put", "patch", "delete"}
# Identifiers of the same shapes as B's that name nothing stored.
NOTHING = [
    "SM" + "9" * 32,
    "01900000-0000-7000-8000-000000000000",
    "SM" + "8" * 32,
    "AC" + "9" * 32,
]


def store_callback(server: Server, account: str, token: str, to: str) -> str:
    sid = new_sid()
    fields = callback_fields(sid, "delivered", AccountSid=account, To=to)
    target, body, headers = signed(fields, token=token, public_url=server.url)
    assert httpx.post(server.url + target, content=body, headers=headers).status_code == 204
    return sid


def store_inbound(server: Server, account: str, token: str, sender: str) -> str:
    sid = new_sid()
    fields = {"MessageSid": sid, "AccountSid": account, "From": sender, "To": "+15005550006",
              "Body": "hello", "NumMedia": "0"}  # fmt: skip
    target, body, headers = signed(
        fields, path="/webhooks/twilio/inbound", token=token, public_url=server.url
    )
    assert httpx.post(server.url + target, content=body, headers=headers).status_code == 200
    return sid


def call(http: httpx.Client, method: str, url: str, **options: Any) -> tuple[int, str]:
    """Status and (up to a second or 256 KiB of) body: an event stream never ends by itself."""
    body = b""
    try:
        with http.stream(method, url, **options) as answer:
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > 256 * 1024:
                    break
    except httpx.ReadTimeout:
        pass
    return answer.status_code, body.decode("utf-8", "replace")


def concrete_urls(path: str, parameters: dict[str, str], values: list[str]) -> list[str]:
    """`path` with each of `values` in its parameters (integers get 1)."""
    names = re.findall(r"{(\w+)}", path)
    choices = [["1"] if parameters.get(name) == "integer" else values for name in names]
    urls = []
    for chosen in itertools.product(*choices):
        url = path
        for name, value in zip(names, chosen, strict=True):
            url = url.replace(f"{{{name}}}", value)
        urls.append(url)
    return urls


def test_a_key_bound_to_one_account_finds_nothing_of_another_on_any_endpoint(server: Server):
    with httpx.Client(base_url=server.url, headers=bearer(API_KEY)) as admin:
        key, ids = tenants(server, admin)
        schema = admin.get("/openapi.json").json()
    with httpx.Client(
        base_url=server.url, headers=bearer(key), timeout=httpx.Timeout(10, read=1.5)
    ) as bound:
        check_every_operation(server, schema, bound, ids)
    # The created key itself was never logged.
    assert key not in server.log.read_text()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tenants(server: Server, admin: httpx.Client) -> tuple[str, dict[str, str]]:
    """Accounts A and B, each with messages; a key bound to A with scopes read and send."""
    for sid, token in ((ACCOUNT_A, TOKEN_A), (ACCOUNT_B, TOKEN_B)):
        added = admin.post("/v1/accounts", json={"sid": sid, "auth_token": token})
        assert added.status_code == 201, added.text
    sid_a = store_callback(server, ACCOUNT_A, TOKEN_A, TO_A)
    sid_b = store_callback(server, ACCOUNT_B, TOKEN_B, TO_B)
    inbound_b = store_inbound(server, ACCOUNT_B, TOKEN_B, "+14155550123")
    id_a = admin.get(f"/v1/messages/{sid_a}").json()["id"]
    id_b = admin.get(f"/v1/messages/{sid_b}").json()["id"]
    created = admin.post(
        "/v1/keys",
        json={"name": "tenant-a", "scopes": ["read", "send"], "account_sids": [ACCOUNT_A]},
    )
    ids = {"sid_a": sid_a, "id_a": id_a, "sid_b": sid_b, "id_b": id_b, "inbound_b": inbound_b}
    return created.json()["key"], ids


def check_every_operation(
    server: Server, schema: dict[str, Any], bound: httpx.Client, ids: dict[str, str]
) -> None:
    sid_a, id_a, sid_b, id_b, inbound_b = (
        ids[name] for name in ("sid_a", "id_a", "sid_b", "id_b", "inbound_b")
    )
    secrets_of_b = [sid_b, id_b, inbound_b, TO_B[2:], "4155550123"]
    named_b = [sid_b, id_b, inbound_b, ACCOUNT_B]
    checked_items, seen_a = 0, set()
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, operation in operations.items():
            parameters = {
                p["name"]: p.get("schema", {}).get("type", "string")
                for p in operation.get("parameters", [])
                if p["in"] == "path"
            }
            json = {"to": "+14155550133", "body": "hi", "account_sid": ACCOUNT_B}
            options = {"json": json} if method in WRITES and "requestBody" in operation else {}
            urls_b = concrete_urls(path, parameters, named_b)
            urls_a = concrete_urls(path, parameters, [sid_a, id_a, sid_a, ACCOUNT_A])
            for url_b, url_a in zip(urls_b, urls_a, strict=True):
                for query in ("", f"?account_sid={ACCOUNT_B}"):
                    status, text = call(bound, method.upper(), url_b + query, **options)
                    where = (method, url_b + query, status)
                    # Only what the request itself named may come back (in a 404's detail).
                    unnamed = [secret for secret in secrets_of_b if secret not in url_b]
                    assert not any(secret in text for secret in unnamed), (where, text)
                    if method in WRITES or parameters:
                        assert not 200 <= status < 300, (where, text)
                    if parameters:
                        # Answered exactly as for an identifier that names nothing at all.
                        absent = url_b
                        for real, fake in zip(named_b, NOTHING, strict=True):
                            absent = absent.replace(real, fake)
                        assert call(bound, method.upper(), absent + query, **options)[0] == status
                if method == "get":
                    status_a, text_a = call(bound, "GET", url_a)
                    if sid_a in text_a:
                        seen_a.add(path)
                    if parameters and status_a == 200:
                        # What A's key finds of A's, it must not find of B's: a 404, as for a
                        # message that does not exist.
                        assert call(bound, "GET", url_b)[0] == 404, (path, url_b)
                        checked_items += 1
    # The comparison ran: A's key sees A's messages where B's are hidden.
    assert {"/v1/messages", "/v1/messages/{id_or_sid}", "/v1/export"} <= seen_a, seen_a
    assert checked_items >= 2
