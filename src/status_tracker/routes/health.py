from fastapi import APIRouter
from fastapi.responses import JSONResponse

from status_tracker import repository
from status_tracker.database import DATABASE_ERRORS
from status_tracker.deps import PoolDep, SettingsDep
from status_tracker.errors import ServiceUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable",
    responses={503: {"description": "The database is not reachable"}},
)
async def readyz(pool: PoolDep, settings: SettingsDep) -> JSONResponse:
    try:
        async with pool.acquire(timeout=settings.db_timeout_seconds) as connection:
            await repository.ping(connection)
    except DATABASE_ERRORS as error:
        raise ServiceUnavailable(f"Database unreachable: {type(error).__name__}") from error
    return JSONResponse({"status": "ready"})
