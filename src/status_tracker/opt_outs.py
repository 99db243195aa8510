"""Who may be messaged: opt-outs as Twilio keeps them (TWILIO.md §9, 21610).

The model. A recipient opts out of a *sender*, not of the service: of the sender number it wrote
to, or of the whole Messaging Service (its pool of numbers) when its message came through one.
So an opt-out is kept per (recipient, scope), the scope being the Messaging Service SID or the
sender number's SHA-256 (a STOP through a service records both: its number, sending alone, is
still that service's), and a send is refused here (21610, nothing sent) only when its own scope
(its Messaging Service if it names one, else its `from`) has the recipient opted out. Opt-outs
stored before scopes existed hold for every sender (scope `*`) until the number opts in again.

What counts: Twilio's `OptOutType` (STOP, START, HELP) when its Advanced Opt-Out sends one (it
does for custom and localised keywords), else Twilio's default keywords, the whole body in any
case. A 21610 from Twilio on a create is an opt-out too: Twilio knows of a STOP this service never
saw. Twilio answers STOP, START and HELP itself, so none of them gets the auto-reply. Recipients
are kept only as SHA-256 hashes: no number needs to be stored to enforce an opt-out.
"""

from typing import Literal

from status_tracker.privacy import number_sha256

OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT",
                              "REVOKE"})  # fmt: skip
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP", "OPTIN"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

Kind = Literal["STOP", "START", "HELP"]
KINDS: tuple[Kind, ...] = ("STOP", "START", "HELP")


def kind_of(body: str, opt_out_type: str | None) -> Kind | None:
    """What an inbound message asks for, as Twilio reads it; None for an ordinary message."""
    if opt_out_type:
        named = opt_out_type.strip().upper()
        for kind in KINDS:
            if named == kind:
                return kind
    keyword = body.strip().upper()
    if keyword in OPT_OUT_KEYWORDS:
        return "STOP"
    if keyword in OPT_IN_KEYWORDS:
        return "START"
    if keyword in HELP_KEYWORDS:
        return "HELP"
    return None


def scope(messaging_service_sid: str | None, sender: str | None) -> str:
    """The scope a send is checked against: its Messaging Service, else its sender number."""
    if messaging_service_sid:
        return messaging_service_sid
    return number_sha256(sender or "")


def scopes_of(messaging_service_sid: str | None, to: str) -> list[str]:
    """The scopes a STOP or START sent to `to` applies to: the number, and its Messaging Service
    when it came through one (the service's whole pool, that number sending alone included)."""
    number = number_sha256(to)
    return [messaging_service_sid, number] if messaging_service_sid else [number]
