"""Checking that a webhook really comes from Twilio (TWILIO.md §3)."""

import hmac

from twilio.request_validator import HMAC_SHA1, RequestValidator, get_signature_algorithm

from status_tracker.callbacks import Form


class SignatureVerifier:
    """Accepts a signature by the primary or the secondary auth token (during a rotation), or
    by a webhook shared key when the request names one in X-Twilio-Webhooks-Signature-Settings."""

    def __init__(self, auth_tokens: list[str], shared_key: str | None = None) -> None:
        self._token_validators = [RequestValidator(token) for token in auth_tokens]
        self._shared_key_validator = RequestValidator(shared_key) if shared_key else None

    def verify(self, url: str, form: Form, signature: str, signature_settings: str | None) -> bool:
        algorithm = get_signature_algorithm(signature_settings)
        if signature_settings and self._shared_key_validator is not None:
            if self._shared_key_validator.validate(url, form, signature, algorithm=algorithm):
                return True
        if algorithm != HMAC_SHA1:
            # Twilio signs with the shared key when the header names one; an auth token can't.
            return False
        # Fast path: the URL exactly as configured, signed by the primary token. The SDK's
        # validate() also tries the URL with and without its default port, at twice the cost.
        if self._token_validators and hmac.compare_digest(
            self._token_validators[0].compute_signature(url, form).encode(), signature.encode()
        ):
            return True
        return any(validator.validate(url, form, signature) for validator in self._token_validators)
