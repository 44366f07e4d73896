"""The OpenAPI document describes what the service sends: real 2xx schemas, declared 4xx with the
``{"detail": str}`` body, and request validation errors in that same form."""
from __future__ import annotations

import pytest

from app.main import create_app


@pytest.fixture(scope="module")
def spec():
    return create_app().openapi()


def _operations(spec):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield f"{method.upper()} {path}", op


def test_every_route_has_a_2xx_schema_and_documented_errors(spec):
    schemas = spec["components"]["schemas"]
    for name, op in _operations(spec):
        ok = {c: r for c, r in op["responses"].items() if c.startswith("2")}
        assert ok, name
        for code, r in ok.items():
            if set(r.get("content", {})) == {"image/png"}:  # binary only (the matrix heatmap): no JSON body
                continue
            content = r.get("content", {}).get("application/json", {})
            ref = content.get("schema", {}).get("$ref", "")
            assert ref.startswith("#/components/schemas/"), f"{name} {code} has no response model"
            target = schemas[ref.rsplit("/", 1)[1]]
            assert target.get("properties"), f"{name} {code}: empty schema"
        for code, r in op["responses"].items():
            if code.startswith("4"):
                assert r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorPublic"}, \
                    f"{name} {code}"
        if name != "GET /healthz":
            assert {"401", "403", "422"} <= set(op["responses"]), name
    assert "HTTPValidationError" not in schemas  # FastAPI's array form is never sent
    assert schemas["ErrorPublic"]["properties"]["detail"]["type"] == "string"


def test_lookups_document_404(spec):
    for name, op in _operations(spec):
        if "{" in name and not name.startswith("POST"):
            assert "404" in op["responses"], name


def test_main_models_carry_examples(spec):
    schemas = spec["components"]["schemas"]
    for model in ("DatasetPublic", "SourcePublic", "RankingPublic", "JobPublic", "MatrixPublic", "KeyPublic",
                  "ErrorPublic", "ModelPublic"):
        assert schemas[model].get("examples"), model


def test_validation_errors_are_one_readable_string(client):
    r = client.get("/v1/datasets", params={"limit": 0})
    assert r.status_code == 422
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and "limit" in body["detail"]
    r = client.post("/v1/rankings", json={"target": "x", "candidates": "planets"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and "candidates" in r.json()["detail"]
    r = client.get("/v1/datasets", params={"offset": 9223372036854775808})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def test_nul_in_the_url_is_a_422(client):
    r = client.get("/v1/datasets/a%00b")
    assert r.status_code == 422 and r.json() == {"detail": "the URL contains a NUL character"}


def test_responses_match_their_models(client):
    from app.api.schemas import DatasetListPublic, EstimatorListPublic, SourceCataloguePublic

    assert client.get("/healthz").json() == {"status": "ok"}
    DatasetListPublic.model_validate(client.get("/v1/datasets").json())
    SourceCataloguePublic.model_validate(client.get("/v1/sources").json())
    est = EstimatorListPublic.model_validate(client.get("/v1/estimators").json())
    assert "logme" in {e.name for e in est.estimators}


def test_nul_in_a_body_string_is_a_4xx_on_every_database(make_client, db_url):
    from app.services import keys as keys_svc

    client = make_client(database_url=db_url)
    _info, key = keys_svc.create(client.app.state.ctx, "ops", "admin")  # key management needs an admin key
    client.headers["Authorization"] = f"Bearer {key}"
    r = client.post("/v1/keys", json={"owner": "a\x00b", "scopes": ["read"]})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    assert [k["owner"] for k in client.get("/v1/keys").json()["keys"]] == ["ops"]  # nothing half-written
    r = client.post("/v1/rankings", json={"target": "a\x00b", "candidates": "models"})
    assert r.status_code in (404, 422) and isinstance(r.json()["detail"], str)
