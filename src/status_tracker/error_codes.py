"""Operator wording for the Twilio error codes people meet most (TWILIO.md §9).

Twilio warns that the code for a cause may change: the raw code is what is stored, this map is
only for display, and an unknown code is described as such rather than guessed.
"""

DESCRIPTIONS: dict[int, str] = {
    11200: "Twilio could not reach your webhook (HTTP retrieval failure).",
    11205: "Twilio could not connect to your webhook.",
    20003: "Authentication failed: check the account SID and auth token.",
    20429: "Too many concurrent requests to Twilio's REST API; retried with backoff.",
    21211: "The 'To' number is not a valid phone number.",
    21408: "Sending to this region is not enabled in the Twilio console (geo permissions).",
    21608: "Trial accounts can only send to verified numbers.",
    21610: "The recipient replied STOP and has unsubscribed from this sender.",
    21611: "The sender's queue is full: too many messages waiting to be sent.",
    21614: "The 'To' number is not a mobile number.",
    21635: "The 'To' number is a landline and cannot receive SMS.",
    21910: "Sender and recipient are on different channels (say, an SMS number to WhatsApp).",
    30001: "Queue overflow: the message waited longer than its validity period.",
    30002: "The Twilio account is suspended.",
    30003: "The handset is unreachable (off, out of coverage); often temporary.",
    30004: "The message was blocked by the carrier or the recipient.",
    30005: "Unknown destination handset: the number may not exist.",
    30006: "The number is a landline or the carrier cannot be reached.",
    30007: "The carrier filtered the message as spam.",
    30008: "Unknown error from the carrier.",
    30017: "Carrier network congestion.",
    30022: "US A2P 10DLC: the campaign's message rate limit was exceeded.",
    30023: "US A2P 10DLC: the daily message cap was reached.",
    30027: "US A2P 10DLC: T-Mobile's daily limit for the brand was reached.",
    30032: "The toll-free number is not verified.",
    30034: "US A2P 10DLC: the sending number is not registered to a campaign.",
    63016: "WhatsApp: outside the 24-hour session window; use an approved template.",
    63018: "The channel's rate limit was exceeded.",
}


def describe(code: int | None) -> str | None:
    if code is None:
        return None
    return DESCRIPTIONS.get(
        code, f"Twilio error {code}: see https://www.twilio.com/docs/errors/{code}"
    )
