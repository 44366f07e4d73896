"""Matrix views (filters, combined score, pagination, long/wide, CSV/Parquet/PNG, unknown
parameters) and batch rankings, through the client against a live service."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pandas as pd
import pytest
from live_server import FAST_MODELS

from conftest import make_texts
from transferrank import Client, NotFoundError, ValidationError


@pytest.fixture(scope="module")
def batch(live):
    with Client(live.url) as tr:
        targets = [tr.upload(make_texts(36 + 6 * i, 2 + i % 2, seed=30 + i), name=f"t{i}") for i in range(3)]
        seen = []
        rankings = tr.rank_batch(targets, candidates="models", estimators=["logme", "hscore"], sources=FAST_MODELS,
                                 progress=lambda p, m: seen.append((p, m)))
    return targets, rankings, seen


def test_batch_ranks_every_target_in_one_job(live, batch):
    targets, rankings, seen = batch
    assert [r.target["id"] for r in rankings] == [t.id for t in targets]
    assert all(r.status == "done" and set(r.sources) == set(FAST_MODELS) for r in rankings)
    assert len({r.job for r in rankings}) == 1  # one job for the whole batch
    assert seen and any(m and m.startswith("target ") for _, m in seen)
    with Client(live.url) as tr:
        job = tr.job(rankings[0].job)
        assert job.kind == "ranking_batch" and job.status == "done"
        assert job.result["rankings"] == [r.id for r in rankings]
        with pytest.raises(NotFoundError, match="nope"):
            tr.rank_batch([targets[0].id, "nope"], estimators=["logme"])
        with pytest.raises(ValidationError, match="unknown estimator"):
            tr.rank_batch([targets[0].id], estimators=["bogus"])


def test_matrix_filters_and_combined_score(live, batch):
    targets, rankings, _ = batch
    with Client(live.url) as tr:
        full = tr.transfer_matrix(target=[t.id for t in targets])
        assert full["total"] == 3 * 2 * 2 and len(full["entries"]) == 12
        two = tr.transfer_matrix(target=[targets[0].id, targets[2].id], estimator="logme")
        assert {e["target"] for e in two["entries"]} == {targets[0].id, targets[2].id}
        assert {e["estimator"] for e in two["entries"]} == {"logme"} and two["total"] == 4
        one_source = tr.transfer_matrix(target=[t.id for t in targets], source="tfidf-svd")
        assert {e["source"] for e in one_source["entries"]} == {"tfidf-svd"}
        # the combined score orders the sources of a target as its ranking does (same estimators, same z-scores)
        for t, r in zip(targets, rankings):
            scores = {e["source"]: e["score"] for e in full["entries"] if e["target"] == t.id}
            assert max(scores, key=scores.get) == r.best
            assert scores[r.best] == pytest.approx(r.ranking[0]["score"], abs=1e-6)
        page1 = tr.transfer_matrix(target=[t.id for t in targets], limit=5)
        page2 = tr.transfer_matrix(target=[t.id for t in targets], limit=5, offset=5)
        page3 = tr.transfer_matrix(target=[t.id for t in targets], limit=5, offset=10)
        assert (len(page1["entries"]), len(page2["entries"]), len(page3["entries"])) == (5, 5, 2)
        assert page1["entries"] + page2["entries"] + page3["entries"] == full["entries"]


def test_matrix_wide_csv_parquet_png(live, batch):
    targets, rankings, _ = batch
    ids = [t.id for t in targets]
    with Client(live.url) as tr:
        wide = tr.transfer_matrix(target=ids, layout="wide")
        assert wide["columns"] == sorted(["t0", "t1", "t2"]) and set(wide["index"]) == set(FAST_MODELS)
        assert all(v is not None for row in wide["data"] for v in row)
        raw = tr.transfer_matrix(target=ids, layout="wide", format="csv")
        frame = pd.read_csv(io.StringIO(raw)).set_index("source")
        assert list(frame.columns) == wide["columns"]
        logme = tr.transfer_matrix(target=ids, layout="wide", format="parquet")
        pq = pd.read_parquet(io.BytesIO(logme))
        assert set(pq["source"]) == set(FAST_MODELS)
        by_logme = tr.transfer_matrix(target=ids, layout="wide", **{"limit": 1})
        assert len(by_logme["index"]) == 1 and by_logme["total"] == 2
        long_pq = pd.read_parquet(io.BytesIO(tr.transfer_matrix(target=ids, format="parquet")))
        assert len(long_pq) == 12 and {"estimator", "source", "value", "score"} <= set(long_pq.columns)
        png = tr.transfer_matrix_png(target=ids, estimator=["logme", "hscore"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        with pytest.raises(NotFoundError, match="no cached scores"):
            tr.transfer_matrix_png(source="no-such-source")


def test_matrix_rejects_unknown_and_bad_parameters(live, batch):
    r = httpx.get(f"{live.url}/v1/transfer-matrix", params={"targets": "x"})
    assert r.status_code == 422 and "unknown query parameter(s) targets" in r.json()["detail"]
    r = httpx.get(f"{live.url}/v1/transfer-matrix.png", params={"format": "csv"})
    assert r.status_code == 422 and "format" in r.json()["detail"]
    r = httpx.get(f"{live.url}/v1/transfer-matrix", params={"format": "png"})
    assert r.status_code == 422
    with Client(live.url) as tr:
        with pytest.raises(ValidationError, match="value must be"):
            tr._get("/v1/transfer-matrix", params={"layout": "wide", "value": "bogus"})
        with pytest.raises(ValidationError, match="unknown estimator"):
            tr.transfer_matrix(estimator="bogus")
        with pytest.raises(NotFoundError, match="no dataset"):
            tr.transfer_matrix(target="missing")


def test_combined_scores_follow_direction():
    from app.services.matrix import combined_scores

    entries = [{"estimator": "hscore", "source": s, "target_sha256": "t", "value": v, "higher_is_better": True}
               for s, v in (("a", 3.0), ("b", 1.0), ("c", 2.0))]
    entries += [{"estimator": "gbc", "source": s, "target_sha256": "t", "value": v, "higher_is_better": False}
                for s, v in (("a", 0.1), ("b", 0.5), ("c", 0.3))]
    out = combined_scores(entries)
    assert out[("a", "t")] > out[("c", "t")] > out[("b", "t")]
    assert np.isclose(sum(out.values()), 0.0)
