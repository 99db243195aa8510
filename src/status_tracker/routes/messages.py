from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from twilio.base.exceptions import TwilioRestException

from status_tracker import repository, sending
from status_tracker.accounts import Account, AccountDirectory
from status_tracker.api_keys import Principal
from status_tracker.deps import (
    AccountsDep,
    ConnectionDep,
    PoolDep,
    PrincipalDep,
    SettingsDep,
    default_twilio,
    require_api_key,
)
from status_tracker.error_codes import describe
from status_tracker.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    GatewayTimeout,
    NotFound,
    Problem,
    Unprocessable,
)
from status_tracker.models import Message, SendMessage, message_view
from status_tracker.twilio_api import TwilioApi

router = APIRouter(prefix="/v1", tags=["messages"], dependencies=[Depends(require_api_key)])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong API key (problem+json)"},
    404: {"description": "No such message (problem+json)"},
}


async def load_message(
    connection: Any, id_or_sid: str, accounts: Sequence[str] | None = None
) -> Message:
    message = await repository.get_message(connection, id_or_sid, accounts)
    if message is None:
        raise NotFound(f"No message {id_or_sid!r}.")
    events = await repository.list_events(connection, message)
    return message_view(message, events)


@router.get(
    "/messages/{id_or_sid}",
    response_model=Message,
    summary="A message, its current status and its full timeline",
    responses=PROBLEMS,
)
async def get_message(
    id_or_sid: str, connection: ConnectionDep, principal: PrincipalDep
) -> Message:
    """`id_or_sid` is Twilio's Message SID (`SM…`/`MM…`) or the service's own id (a UUID)."""
    return await load_message(connection, id_or_sid, principal.visible_accounts())


@router.post(
    "/messages",
    status_code=201,
    response_model=Message,
    summary="Send a message through Twilio, on record before and after",
    responses={
        200: {"description": "Replayed: this Idempotency-Key already sent this request"},
        401: PROBLEMS[401],
        409: {"description": "The Idempotency-Key was used with a different request"},
        422: {"description": "Invalid request; `errors` names the field (problem+json)"},
        "4XX": {"description": "Twilio refused the message: `twilio_code`, stored as failed"},
        502: {"description": "Twilio unreachable or 5xx: outcome unknown, not retried"},
        503: {"description": "Twilio not configured, or database unavailable"},
        504: {"description": "Twilio timed out: outcome unknown, not retried"},
    },
)
async def send_message(
    message: SendMessage,
    response: Response,
    pool: PoolDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    directory: AccountsDep,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="A retry with the same key returns the same message and sends nothing",
        ),
    ] = None,
) -> Message:
    """The attempt is stored before Twilio is called and Twilio's answer after, so every
    attempt can be found with `GET /v1/messages/{id}`, including those Twilio refused or never
    answered. Status callbacks for it come to this service's status webhook. `account_sid`
    sends through that stored account (its credentials and default sender)."""
    account, twilio = await sending_account(message.account_sid, principal, directory, request)
    try:
        result = await sending.send(pool, twilio, settings, message, idempotency_key, account)
    except sending.InvalidSend as invalid:
        raise Unprocessable(
            str(invalid), errors=[{"field": invalid.field, "message": str(invalid)}]
        ) from invalid
    except sending.IdempotencyConflict as conflict:
        raise Conflict(str(conflict)) from conflict
    if isinstance(result.error, sending.OptedOut):
        opted_out = BadRequest(
            "Not sent: the recipient replied STOP to this service, so Twilio would refuse it "
            "(code 21610). The attempt is stored as failed; a START from them lifts the opt-out.",
            twilio_code=result.error.code,
            error_description=describe(result.error.code),
            message_id=str(result.message_id),
        )
        opted_out.title = "Recipient opted out"
        raise opted_out
    if result.outcome == "refused":
        assert isinstance(result.error, TwilioRestException)
        raise twilio_refusal(result.error, message_id=str(result.message_id))
    if result.outcome == "unknown":
        problem = GatewayTimeout if "Timeout" in type(result.error).__name__ else BadGateway
        raise problem(
            "Twilio did not answer clearly: the message may or may not have been sent. It is "
            "recorded with send_outcome 'unknown'; do not resend, reconciliation settles it.",
            message_id=str(result.message_id),
        )
    if result.outcome == "replayed":
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        return await load_message(connection, str(result.message_id))


@router.delete(
    "/messages/{id_or_sid}",
    response_model=Message,
    summary="Cancel a scheduled message",
    responses={**PROBLEMS, 409: {"description": "The message is not scheduled (any more)"}},
)
async def cancel_message(
    id_or_sid: str,
    pool: PoolDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    directory: AccountsDep,
    request: Request,
) -> Message:
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        message = await load_message(connection, id_or_sid, principal.visible_accounts())
    stored = message.account_sid if directory.account(message.account_sid or "") else None
    _, twilio = await sending_account(stored, principal, directory, request)
    if message.sid is None or message.status != "scheduled":
        raise Conflict(f"Only a scheduled message can be canceled; this one is {message.status}.")
    try:
        await sending.cancel(pool, twilio, settings, message.sid, message.id)
    except TwilioRestException as refusal:
        raise twilio_refusal(refusal, message_id=str(message.id)) from refusal
    async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
        return await load_message(connection, str(message.id))


async def sending_account(
    account_sid: str | None, principal: Principal, directory: AccountDirectory, request: Request
) -> tuple[Account | None, TwilioApi]:
    """The stored account a send goes through (None: the default account of the environment),
    and its Twilio client. A key bound to accounts sends through one of them: the one it is
    bound to when it names none."""
    bound = principal.account_sids
    if account_sid is None and bound is not None:
        if len(bound) != 1:
            message = "This key is bound to several accounts: name one in account_sid."
            raise Unprocessable(message, errors=[{"field": "body.account_sid", "message": message}])
        (account_sid,) = bound
    if account_sid is None or account_sid == request.state.settings.twilio_account_sid:
        if bound is not None and account_sid not in bound:
            raise NotFound("No such account.")
        return None, await default_twilio(request)
    account = directory.account(account_sid)
    if account is None or not principal.visible_accounts(account_sid):
        raise NotFound(f"No account {account_sid}: add it with POST /v1/accounts.")
    twilio = directory.twilio_for(account_sid)
    assert twilio is not None
    return account, twilio


def twilio_refusal(refusal: TwilioRestException, **extensions: Any) -> Problem:
    """Twilio's refusal as a problem carrying Twilio's code and what it means."""
    # Twilio refusing our own credentials is the service's fault, not the client's.
    client_fault = 400 <= refusal.status < 500 and refusal.status not in (401, 403)
    problem = Problem(
        f"Twilio refused: {refusal.msg}",
        twilio_code=refusal.code,
        error_description=describe(refusal.code),
        **extensions,
    )
    problem.status = refusal.status if client_fault else 502
    problem.title = "Refused by Twilio"
    return problem
