"""/v1 matrix views and batch rankings: parse, call a service, shape the response.

- ``GET /v1/transfer-matrix``: repeated ``estimator``/``target``/``source`` filters,
  ``layout=long|wide``, ``value`` (wide: ``score`` or an estimator), ``limit``/``offset``,
  ``format=json|csv|parquet``; unknown query parameters -> 422.
- ``GET /v1/transfer-matrix.png``: the wide matrix as a heatmap.
- ``POST /v1/rankings/batch``: several targets, one job (202).
"""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AuthDep, CtxDep, authenticate
from app.api.routes import PublicRoute
from app.api.schemas import BatchRankingPublic, ErrorPublic, MatrixPublic, errors
from app.core.errors import Invalid
from app.services import batch as batch_svc
from app.services import matrix as matrix_svc
from app.services import rankings as rankings_svc
from app.services.context import Context

router = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=errors(400, 401, 403, 422),
                   route_class=PublicRoute)

ERR = {"model": ErrorPublic, "description": "`{\"detail\": \"...\"}`: what to change"}


MATRIX_PARAMS = ("estimator", "target", "source", "layout", "value", "limit", "offset", "format")
PNG_PARAMS = ("estimator", "target", "source", "value", "limit", "offset", "title")


def only_params(*allowed: str):
    """422 for a query parameter the route does not know (a typo must not be silently ignored)."""

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(allowed))
        if unknown:
            raise Invalid(f"unknown query parameter(s) {', '.join(unknown)}; this endpoint takes "
                          f"{', '.join(allowed)}")
    return Depends(check)


Estimators = Annotated[list[str] | None, Query(description="estimator name; repeat for several")]
Targets = Annotated[list[str] | None, Query(description="dataset id or sha256; repeat for several")]
Sources = Annotated[list[str] | None, Query(description="source task or model name; repeat for several")]
Value = Annotated[str, Query(max_length=64, description="wide layout / PNG: 'score' (combined) or an estimator")]
Offset = Annotated[int, Query(ge=0)]


def _matrix(ctx: Context, owner: str | None, estimator, target, source, layout: str, value: str,
            limit: int | None, offset: int) -> dict:
    return _shape(matrix_svc.build(ctx, estimator, target, owner, source=source), layout, value, limit, offset)


def _shape(data: dict, layout: str, value: str, limit: int | None, offset: int) -> dict:
    if layout == "wide":
        return matrix_svc.wide(data, value, limit, offset)
    if value != "score":
        raise Invalid("value applies to layout=wide only")
    return matrix_svc.page(data, limit, offset)


MATRIX_200 = {"description": "JSON; CSV (text/csv) or Parquet (application/vnd.apache.parquet) with format=",
              "content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}


@router.get("/transfer-matrix", tags=["scores"], dependencies=[only_params(*MATRIX_PARAMS)],
            response_model=MatrixPublic, responses={200: MATRIX_200, 404: ERR})
def transfer_matrix(ctx: CtxDep, principal: AuthDep, estimator: Estimators = None, target: Targets = None,
                    source: Sources = None,
                    layout: Annotated[Literal["long", "wide"], Query(
                        description="long: one entry per source x target x estimator; wide: sources x targets")]
                    = "long",
                    value: Value = "score",
                    limit: Annotated[int | None, Query(ge=1, le=100_000, description="long: entries; wide: rows")]
                    = None,
                    offset: Offset = 0, format: Literal["json", "csv", "parquet"] = "json"):
    if format == "json":  # the rendered answer, cached by the catalogue's state (one state query per read)
        def render(data: dict) -> bytes:
            shaped = _shape(data, layout, value, limit, offset)
            return MatrixPublic.model_validate(shaped).model_dump_json(by_alias=True).encode()

        return Response(matrix_svc.rendered(ctx, estimator, target, principal.owner, source,
                                            [layout, value, limit, offset], render), media_type="application/json")
    data = _matrix(ctx, principal.owner, estimator, target, source, layout, value, limit, offset)
    if format == "csv":
        return PlainTextResponse(matrix_svc.to_csv(data), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="transfer-matrix.csv"'})
    if format == "parquet":
        return Response(matrix_svc.to_parquet(data), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": 'attachment; filename="transfer-matrix.parquet"'})
    return MatrixPublic.model_validate(data)


@router.get("/transfer-matrix.png", tags=["scores"], dependencies=[only_params(*PNG_PARAMS)],
            response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the heatmap"}, 404: ERR, 501: ERR})
async def transfer_matrix_png(ctx: CtxDep, principal: AuthDep, estimator: Estimators = None, target: Targets = None,
                              source: Sources = None, value: Value = "score",
                              limit: Annotated[int, Query(ge=1, le=200, description="at most this many sources")]
                              = 50,
                              offset: Offset = 0, title: Annotated[str | None, Query(max_length=200)] = None):
    def draw() -> bytes:
        data = _matrix(ctx, principal.owner, estimator, target, source, "wide", value, limit, offset)
        return matrix_svc.heatmap_png(data, title)

    return Response(await run_in_threadpool(draw), media_type="image/png")


class BatchRankingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[str] = Field(..., min_length=1, max_length=batch_svc.MAX_TARGETS, description="dataset ids")
    candidates: Literal["tasks", "models"] = Field(..., description="rank source tasks or pretrained models")
    estimators: list[str] | None = Field(None, description="as POST /v1/rankings (default combination if null)")
    top_k: int = Field(10, ge=1, le=10_000)
    prefilter_k: int | None = Field(None, ge=1)
    sources: list[str] | None = None
    params: dict[str, dict] = Field(default_factory=dict)
    use_feedback: bool | None = None


@router.post("/rankings/batch", tags=["rankings"], status_code=202, response_model=BatchRankingPublic,
             responses={202: {"description": "one job ranks every target; poll GET /v1/jobs/{job}, then "
                                             "GET /v1/rankings/{id} per target"}, 404: ERR, **errors(413)})
def create_batch(ctx: CtxDep, principal: AuthDep, body: BatchRankingRequest) -> BatchRankingPublic:
    fields = body.model_dump()
    targets = fields.pop("targets")
    spec = rankings_svc.RankingSpec(target=targets[0], **fields, owner=principal.owner)
    return BatchRankingPublic.model_validate(batch_svc.create(ctx, spec, targets))
