"""The FastAPI application. ``create_app(settings)`` builds it; ``transferrank serve`` runs it.

On start (lifespan) the service context is opened and the start-up work of
``app.services.startup`` runs: migrations to head, stale jobs reaped, encoder catalogue
mirrored, demo catalogue seeded, FAISS index checked against SQL.

Every error is ``{"detail": "text"}`` (``app.api.schemas.ErrorPublic``), request validation
errors included; ``/docs`` and ``/redoc`` are served from packaged assets (no CDN).
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.schemas import HealthPublic, InfoPublic, errors
from app.core.config import Settings
from app.core.errors import ServiceError
from app.core.logging import get_logger

if TYPE_CHECKING:
    from app.services.context import Context
    from app.workers.base import WorkerBackend

log = get_logger("api")

UPLOAD_OVERHEAD = 64 * 1024  # multipart framing around the file
VERSION = "0.1.0"
DOCS_ASSETS = "/docs-assets"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _docs_assets() -> Path:
    """Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def _mount_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` from packaged assets, so they render without internet."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS, StaticFiles(directory=_docs_assets()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
                                   oauth2_redirect_url=oauth2_redirect,
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


#: set by ``transferrank serve --workers N`` (N > 1) for its API processes: the start-up is done
PREPARED_ENV = "TR_SERVE_PREPARED"


def serve_app() -> FastAPI:
    """The app of one of ``serve --workers N``'s API processes (uvicorn's factory): settings from
    the environment the parent set, the once-per-start work already done by the parent."""
    from app.services.startup import limit_api_threads

    settings = Settings.from_env()
    limit_api_threads(settings)
    return create_app(settings, prepared=os.environ.get(PREPARED_ENV) == "1")


def create_app(settings: Settings | None = None, *, ctx: Context | None = None,
               backend: WorkerBackend | None = None, prepared: bool = False) -> FastAPI:
    from app.api.deps import authenticate
    from app.api.routes import admin, router
    from app.api.routes_matrix import router as matrix_router

    resolved = settings or (ctx.settings if ctx is not None else Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from app.services import keys as keys_svc
        from app.services import startup

        keys_svc.check_settings(resolved)  # open mode off loopback, weak bootstrap secret: refuse to start
        own = ctx is None
        app.state.ctx = ctx if ctx is not None else startup.open_context(resolved, backend=backend, prepared=prepared)
        keys_svc.bootstrap(app.state.ctx)
        mode_line = keys_svc.describe_mode(app.state.ctx)
        (log.warning if keys_svc.effective_mode(app.state.ctx) != "keys" else log.info)(mode_line)
        if own and resolved.warm_up:
            startup.warm_up(app.state.ctx)
        try:
            yield
        finally:
            if own:
                app.state.ctx.close()

    app = FastAPI(
        title="TransferRank",
        version=VERSION,
        description="Rank source tasks and pretrained models for transfer learning before fine-tuning.\n\n"
                    "Errors are `{\"detail\": \"text\"}`. Once an API key exists (or when the service is not "
                    "bound to loopback), every `/v1` call needs `Authorization: Bearer <key>`; another owner's "
                    "rows answer 404.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = resolved
    _mount_docs(app)

    @app.exception_handler(ServiceError)
    async def _service_error(_req: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status_code, exc.detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(ValueError)
    async def _value_error(_req: Request, exc: ValueError) -> JSONResponse:  # estimators' input errors
        if isinstance(exc, ValidationError):  # a response that does not match its model: a bug, not a 422
            raise exc
        return _error(422, str(exc))

    @app.exception_handler(DataError)
    async def _data_error(_req: Request, exc: DataError) -> JSONResponse:  # a value the database cannot store
        return _error(422, f"the database rejected a value of the request: {str(exc.orig).splitlines()[0]}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.middleware("http")
    async def _guards(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if "\x00" in unquote(request.url.path) or "\x00" in unquote(request.url.query):
            return _error(422, "the URL contains a NUL character")
        if request.method == "POST" and request.url.path.rstrip("/") == "/v1/datasets":
            length = request.headers.get("content-length")
            limit = resolved.max_upload_bytes
            if length and length.isdigit() and int(length) > limit + UPLOAD_OVERHEAD:
                return _error(413, f"the upload has {int(length)} bytes, over the limit of {limit} "
                                   "(TRANSFERRANK_MAX_UPLOAD_BYTES)")
        if request.method in ("POST", "PUT", "PATCH") and request.url.path.startswith("/v1/"):
            # writes are authenticated before their body is read, so an anonymous upload costs nothing;
            # the route's own auth dependency then finds the result in the cache
            from fastapi.concurrency import run_in_threadpool

            from app.services import keys as keys_svc

            try:
                await run_in_threadpool(keys_svc.authenticate, request.app.state.ctx,
                                        request.headers.get("authorization"), "write")
            except ServiceError as exc:
                return _error(exc.status_code, exc.detail)
        return await call_next(request)

    from app.api.limits import install as install_limits

    install_limits(app, settings)  # body / string / number limits, fault -> 4xx/507 mapping

    @app.get("/healthz", tags=["health"], response_model=HealthPublic)
    def healthz() -> HealthPublic:
        return HealthPublic(status="ok")

    @app.get("/v1/info", tags=["health"], dependencies=[Depends(authenticate)], response_model=InfoPublic,
             responses=errors(400, 401, 403, 422))
    def info(request: Request) -> dict[str, Any]:
        """Data dir, database kind, worker backend, FAISS index and base encoder of this service."""
        described: dict[str, Any] = request.app.state.ctx.describe()
        return described

    from app.api.routes_jobs import router as jobs_router

    app.include_router(jobs_router)
    app.include_router(matrix_router)
    app.include_router(router)
    app.include_router(admin)
    from app.api import routes_models, routes_sources_import

    app.include_router(routes_models.router)
    app.include_router(routes_sources_import.router)
    return app
