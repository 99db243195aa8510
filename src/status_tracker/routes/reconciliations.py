from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from status_tracker import repository
from status_tracker.deps import ConnectionDep, PrincipalDep, require_api_key
from status_tracker.errors import NotFound
from status_tracker.models import Discrepancy, Reconciliation, ReconciliationReport

router = APIRouter(
    prefix="/v1/reconciliations", tags=["reconciliation"], dependencies=[Depends(require_api_key)]
)


@router.get(
    "",
    response_model=list[Reconciliation],
    summary="Reconciliation passes, newest first",
    responses={401: {"description": "Missing or wrong API key (problem+json)"}},
)
async def list_reconciliations(
    connection: ConnectionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    account_sid: Annotated[
        str | None,
        Query(description="Only this stored account's passes", pattern=r"^AC[0-9a-f]{32}$"),
    ] = None,
) -> list[Reconciliation]:
    rows = await repository.list_reconciliations(
        connection, limit, principal.visible_accounts(account_sid)
    )
    return [Reconciliation.model_validate(dict(row)) for row in rows]


@router.get(
    "/{reconciliation_id}",
    response_model=ReconciliationReport,
    summary="One pass, with what it could not settle",
    responses={
        401: {"description": "Missing or wrong API key (problem+json)"},
        404: {"description": "No such pass (problem+json)"},
    },
)
async def get_reconciliation(
    reconciliation_id: Annotated[int, Path(ge=1, le=2**62)],
    connection: ConnectionDep,
    principal: PrincipalDep,
) -> ReconciliationReport:
    row = await repository.get_reconciliation(
        connection, reconciliation_id, principal.visible_accounts()
    )
    if row is None:
        raise NotFound(f"No reconciliation {reconciliation_id}.")
    unresolved = await repository.list_discrepancies(connection, reconciliation_id)
    return ReconciliationReport(
        **dict(row), unresolved=[Discrepancy.model_validate(dict(d)) for d in unresolved]
    )
