"""The FastAPI application. ``create_app(settings)`` builds it; ``transferrank serve`` runs it.

On start (lifespan) the service context is opened: migrations to head, stale jobs reaped,
encoder catalogue mirrored, demo catalogue seeded, FAISS index checked against SQL.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.config import Settings
from app.core.errors import ServiceError
from app.core.logging import get_logger

log = get_logger("api")

UPLOAD_OVERHEAD = 64 * 1024  # multipart framing around the file


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(settings: Settings | None = None, *, ctx=None, backend=None) -> FastAPI:
    from app.api.deps import require
    from app.api.routes import admin, router
    from app.api.routes_matrix import router as matrix_router

    settings = settings or (ctx.settings if ctx is not None else Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from app.services.context import Context

        own = ctx is None
        app.state.ctx = ctx if ctx is not None else Context.open(settings, backend=backend)
        if own and settings.warm_up:
            app.state.ctx.warm_up()
        try:
            yield
        finally:
            if own:
                app.state.ctx.close()

    app = FastAPI(
        title="TransferRank",
        version="0.1.0",
        description="Rank source tasks and pretrained models for transfer learning before fine-tuning.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    @app.exception_handler(ServiceError)
    async def _service_error(_req: Request, exc: ServiceError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(ValueError)
    async def _value_error(_req: Request, exc: ValueError):  # estimators' input errors
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def _upload_limit(request: Request, call_next):
        if request.method == "POST" and request.url.path.rstrip("/") == "/v1/datasets":
            length = request.headers.get("content-length")
            limit = settings.max_upload_bytes
            if length and length.isdigit() and int(length) > limit + UPLOAD_OVERHEAD:
                return JSONResponse({"detail": f"the upload has {int(length)} bytes, over the limit of {limit} "
                                               "(TRANSFERRANK_MAX_UPLOAD_BYTES)"}, status_code=413)
        return await call_next(request)

    @app.get("/healthz", tags=["health"])
    def healthz():
        return {"status": "ok"}

    @app.get("/v1/info", tags=["health"], dependencies=[Depends(require())])
    def info(request: Request):
        """Data dir, database kind, worker backend, FAISS index and base encoder of this service."""
        return request.app.state.ctx.describe()

    app.include_router(matrix_router)
    app.include_router(router)
    app.include_router(admin)
    return app
