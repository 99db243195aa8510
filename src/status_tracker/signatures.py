"""Checking that a webhook really comes from Twilio (TWILIO.md §3)."""

import hmac

from twilio.request_validator import HMAC_SHA1, RequestValidator, get_signature_algorithm

from status_tracker.callbacks import Form


def signing_key_id(signature_settings: str | None) -> str | None:
    """The key id that X-Twilio-Webhooks-Signature-Settings names (`key=…,algorithm=…`)."""
    for part in (signature_settings or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "key" and value.strip():
            return value.strip()
    return None


class SignatureVerifier:
    """Accepts a signature by the primary or the secondary auth token (during a rotation), or
    by a webhook shared key when the request names one in X-Twilio-Webhooks-Signature-Settings:
    the key of that id among `shared_keys` (several overlap during a rotation), else the one
    `shared_key` kept for any id."""

    def __init__(
        self,
        auth_tokens: list[str],
        shared_key: str | None = None,
        shared_keys: dict[str, str] | None = None,
    ) -> None:
        self._token_validators = [RequestValidator(token) for token in auth_tokens]
        self._shared_key_validator = RequestValidator(shared_key) if shared_key else None
        self._keyed_validators = {
            key_id: RequestValidator(secret) for key_id, secret in (shared_keys or {}).items()
        }

    @property
    def configured(self) -> bool:
        return bool(self._token_validators or self._shared_key_validator or self._keyed_validators)

    def verify(
        self, url: str, form: Form | str, signature: str, signature_settings: str | None
    ) -> bool:
        """`form` is a form body, or the text of a JSON body (Event Streams), which Twilio signs
        through the `bodySHA256` query parameter of `url` (the caller checks it is there)."""
        algorithm = get_signature_algorithm(signature_settings)
        if signature_settings:
            key_id = signing_key_id(signature_settings)
            keyed = self._keyed_validators.get(key_id) if key_id else None
            validator = keyed or self._shared_key_validator
            if validator is not None and validator.validate(
                url, form, signature, algorithm=algorithm
            ):
                return True
        if algorithm != HMAC_SHA1:
            # Twilio signs with the shared key when the header names one; an auth token can't.
            return False
        # Fast path: the URL exactly as configured, signed by the primary token. The SDK's
        # validate() also tries the URL with and without its default port, at twice the cost.
        # A JSON body needs the SDK's validate(), which also checks its hash.
        if (
            isinstance(form, Form)
            and self._token_validators
            and hmac.compare_digest(
                self._token_validators[0].compute_signature(url, form).encode(), signature.encode()
            )
        ):
            return True
        return any(validator.validate(url, form, signature) for validator in self._token_validators)
