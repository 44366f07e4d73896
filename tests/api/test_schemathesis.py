"""Property-based API test: schemathesis generates requests from /openapi.json (schema-valid and
schema-invalid) and checks that the service never answers 5xx, answers only documented status
codes and content types, and that every body matches its documented schema. Bounded: a few
examples per operation and mode; path parameters also take the ids of stored objects."""
from __future__ import annotations

import io

import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 12


@pytest.fixture
def served(settings_factory, db_url):
    """A service (SQLite, and PostgreSQL when configured) with a dataset and an admin key, so
    lookups can also succeed."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services.startup import open_context

    ctx = open_context(settings_factory(database_url=db_url))
    app = create_app(ctx=ctx)
    with TestClient(app) as client:
        from app.services import keys as keys_svc

        info, key = keys_svc.create(ctx, "schemathesis", "admin")  # never from an anonymous request
        headers = {"Authorization": f"Bearer {key}"}
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        np.savez(buf, features=rng.normal(size=(40, 8)), labels=np.arange(40) % 2)
        ds = client.post("/v1/datasets", files={"file": ("feats.npz", buf.getvalue())}, headers=headers).json()
        known = {"dataset_id": ds["id"], "key_id": info["id"], "name": "tfidf-svd"}
        yield app, known, headers
    ctx.close()


def _run(operation, mode, path_parameters, headers):
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        if case.operation.path == "/v1/keys/{key_id}" and case.method.upper() == "DELETE":
            case.headers = {**(case.headers or {}), **headers}
            if (case.path_parameters or {}).get("key_id") == path_parameters.get("key_id"):
                return  # keep the key the test authenticates with
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()


def test_api_conforms_to_its_schema(served):
    app, known, headers = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 18
    for op in operations:
        params = {p.name: known[p.name] for p in op.path_parameters if p.name in known}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _run(op, mode, {}, headers)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to break in a call without input
            if params and mode is GenerationMode.POSITIVE:
                _run(op, mode, params, headers)
