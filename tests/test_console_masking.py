"""What the console shows of personal data before anyone reveals it."""

from status_tracker.console import masking


def test_numbers_keep_only_their_first_and_last_two_digits():
    assert masking.number("+14155550123", reveal=False) == "+14•••••••23"
    assert masking.number("whatsapp:+4915112345678", reveal=False) == "whatsapp:+49•••••••••78"
    assert masking.number("14155550123", reveal=False) == "14•••••••23"  # WaId has no +
    # Stored redacted: the digits left are masked all the same.
    assert masking.number("+1415555****", reveal=False) == "+14•••••••**"
    assert masking.number("+14155550123", reveal=True) == "+14155550123"


def test_raw_fields_hide_numbers_wherever_they_are_and_names_places_and_bodies():
    shown = masking.fields(
        {
            "To": "+14155550123",
            "WaId": "4915112345678",
            "ProfileName": "Ada Lovelace",
            "Latitude": "51.5",
            "Body": "my secret",
            "ChannelMetadata": '{"data":{"context":{"From":"+4915112345678"}}}',
            "SomethingNew": "call +14155550999 back",
            "MessageStatus": "delivered",
            "Nested": {"to": ["+14155550123"]},
        },
        reveal=False,
    )
    text = repr(shown)
    for secret in ("4155550123", "5112345678", "Ada", "51.5", "my secret", "4155550999"):
        assert secret not in text
    assert shown["MessageStatus"] == "delivered"
    assert shown["Body"] == "••• (9 characters, hidden)"
    assert shown["ChannelMetadata"] == '{"data":{"context":{"From":"+49•••••••••78"}}}'
