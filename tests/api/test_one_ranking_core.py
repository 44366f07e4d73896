"""One ranking core: the library, the CLI and the REST API rank the same target the same way.

``estimators.ranking.rank_candidates``, ``transferrank rank --json`` and ``POST /v1/rankings``
all fill the library's ``ScoreTable`` and call its ``combine``; the same NPZ target (features of
four models with their source-class probabilities) must come out in the same order with the
same scores, bit for bit. Also: a ranking with nothing to rank by fails with the reason (422
synchronously, ``failed`` as a job), and a fallback value is cached under the parameters that
produced it.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import select

import estimators
from conftest import FAST_BASE, csv_bytes, make_texts, rank, upload, wait_job
from estimators.ranking import DEFAULT_ESTIMATORS, rank_candidates

MODELS = ("alpha", "beta", "gamma", "delta")


def _target(seed: int = 3) -> dict[str, np.ndarray]:
    """90 examples of 3 classes; each model's features separate the classes by a different margin,
    its source head predicts them with a different sharpness (float32, as embeddings are)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 30)
    arrays: dict[str, np.ndarray] = {"labels": y, "features": rng.normal(size=(90, 6)).astype(np.float32)}
    for sep, sharp, m in zip((2.5, 1.2, 0.6, 0.0), (3.0, 1.5, 2.0, 0.0), MODELS):
        means = rng.normal(size=(3, 12))
        arrays[f"features_{m}"] = (sep * means[y] + rng.normal(size=(90, 12))).astype(np.float32)
        logits = rng.normal(size=(90, 5))
        logits[np.arange(90), y] += sharp
        p = np.exp(logits - logits.max(1, keepdims=True))
        arrays[f"probs_{m}"] = (p / p.sum(1, keepdims=True)).astype(np.float32)
    return arrays


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_library_cli_and_api_rank_the_same_npz_target_identically(tmp_path, make_client):
    arrays = _target()
    path = tmp_path / "target.npz"
    path.write_bytes(_npz(arrays))

    lib = rank_candidates({m: {"features": arrays[f"features_{m}"], "probs": arrays[f"probs_{m}"]} for m in MODELS},
                          arrays["labels"])
    lib_rows = [(r["name"], r["score"], r["scores"]) for r in lib]
    assert set(lib[0]["scores"]) == set(DEFAULT_ESTIMATORS["models"]) and lib[0]["skipped"] == {}

    env = dict(os.environ, TRANSFERRANK_BASE_ENCODER=FAST_BASE, TRANSFERRANK_SEED_DEMO="0",
               TRANSFERRANK_DATA_DIR=str(tmp_path / "cli"), PYTHONPATH=os.getcwd())
    env.pop("TRANSFERRANK_DATABASE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "app.cli", "rank", str(path), "--candidates", "models",
                           "--sources", ",".join(MODELS), "--json"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    cli_rows = [(r["source"], r["score"], {k: v for k, v in r["scores"].items() if v is not None})
                for r in cli["ranking"]]

    client = make_client(tmp_path / "api")
    did = upload(client, _npz(arrays), "target.npz").json()["id"]
    api = rank(client, {"target": did, "candidates": "models", "sources": list(MODELS)})
    api_rows = [(r["source"], r["score"], {k: v for k, v in r["scores"].items() if v is not None})
                for r in api["ranking"]]

    assert cli["estimators"] == api["estimators"] == list(DEFAULT_ESTIMATORS["models"])  # no LEEP auto-add
    assert lib_rows == cli_rows == api_rows  # same order, same floats (no tolerance)
    assert [r["rank"] for r in api["ranking"]] == [1, 2, 3, 4]
    # the clearest class signal leads and the model without one comes last (alpha and beta are
    # close under the default: TMI, a member, sees the same intra-class spread in all four)
    assert lib_rows[0][0] in ("alpha", "beta") and lib_rows[-1][0] == "delta"
    # the bootstrap (estimators.uncertainty, B = 100, seed 0) is the same computation everywhere
    unc = [[(r.get("name") or r.get("source"), r["interval"], r["p_top"], r["tied_with_top"], r["tied_by"])
            for r in rows]
           for rows in (lib, cli["ranking"], api["ranking"])]
    assert unc[0] == unc[1] == unc[2]
    assert api["uncertainty"]["B"] == cli["uncertainty"]["B"] == 100


def test_nothing_to_rank_by_is_a_failed_ranking(client):
    # synchronous (NPZ): no candidate has source probabilities -> 422 with the reason
    rng = np.random.default_rng(0)
    did = upload(client, _npz({"features": rng.normal(size=(30, 4)).astype(np.float32),
                               "labels": np.arange(30) % 3}), "f.npz").json()["id"]
    r = client.post("/v1/rankings", json={"target": did, "candidates": "models", "estimators": ["leep"]})
    assert r.status_code == 422 and "no estimator could score" in r.json()["detail"]
    assert "probabilities" in r.json()["detail"]
    # as a job (texts need feature extraction): the job and the ranking end failed with the reason
    tid = upload(client, csv_bytes(*make_texts(30, 3)), "t.csv").json()["id"]
    r = client.post("/v1/rankings", json={"target": tid, "candidates": "models", "estimators": ["leep"],
                                          "sources": [FAST_BASE]})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job"])
    assert job["status"] == "failed" and "no estimator could score" in job["error"]
    got = client.get(f"/v1/rankings/{r.json()['id']}").json()
    assert got["status"] == "failed" and "no estimator could score" in got["error"] and not got.get("ranking")


def test_fallback_value_is_cached_under_the_parameters_used(client):
    """N-LEEP's defaults cannot be fitted on 60 noisy samples in 120 dims; the fallback values are
    cached under the hash of the fallback parameters, and a repeat request serves them from the
    cache with the fallback note."""
    from app.db.models import Score
    from app.services import scores as scores_svc

    rng = np.random.default_rng(2)
    y = np.arange(60) % 3
    X = rng.normal(size=(60, 120))
    X[:, :3] += np.eye(3)[y]
    good = np.eye(3)[y] * 3 + rng.normal(size=(60, 3))
    did = upload(client, _npz({"features": X.astype(np.float32), "labels": y,
                               "features_good": good.astype(np.float32)}), "fb.npz").json()["id"]
    body = {"target": did, "candidates": "models", "estimators": ["logme", "nleep"]}
    first = rank(client, body)
    note = first["ranking"][0]["details"]["nleep"]["fallback"]
    assert "n_components" in note and first["notes"]["nleep"] == note
    ctx = client.app.state.ctx
    with ctx.Session() as s:
        rows = list(s.scalars(select(Score).where(Score.estimator == "nleep")))
    fallback_hash = scores_svc.params_hash({"n_components": 3})
    assert fallback_hash != scores_svc.params_hash({})
    by_hash = {(r.source, r.params_hash): r.params for r in rows}
    # both candidates under the fallback's hash, with its parameters; the default's hash holds
    # only the value the defaults did produce ("good"), never a fallback value
    assert by_hash[("features", fallback_hash)] == by_hash[("good", fallback_hash)] == {"n_components": 3}
    assert by_hash.get(("good", scores_svc.params_hash({}))) == {}
    assert ("features", scores_svc.params_hash({})) not in by_hash
    same = rank(client, body)
    assert same["id"] == first["id"]  # the same request on the same state is the same ranking
    again = rank(client, dict(body, top_k=5))  # a new one, from the cache
    assert again["id"] != first["id"] and again["computed"] == 0
    assert all(r["details"]["nleep"]["cached"] and r["details"]["nleep"]["fallback"] == note
               for r in again["ranking"])
    scored = [(r["source"], r["score"]) for r in again["ranking"]]
    assert scored == [(r["source"], r["score"]) for r in first["ranking"]]
    assert again["ranking"][0]["scores"]["nleep"] == pytest.approx(
        estimators.score("nleep", X.astype(np.float32), y, n_components=3)
        if again["ranking"][0]["source"] == "features" else
        estimators.score("nleep", good.astype(np.float32), y, n_components=3))


def test_bootstrap_draws_are_cached_and_reused(client, monkeypatch):
    """Each cell's bootstrap draws are stored in the score cache (estimator ``bootstrap:<name>``,
    keyed by the cell's parameters, B and the seed); a repeated ranking reads them back."""
    from app.db.models import Score
    from app.services import rankings as rankings_svc

    arrays = _target(seed=5)
    did = upload(client, _npz(arrays), "t.npz").json()["id"]
    body = {"target": did, "candidates": "models", "sources": list(MODELS), "estimators": ["logme", "leep"]}
    first = rank(client, body)
    ctx = client.app.state.ctx
    with ctx.Session() as s:
        rows = list(s.scalars(select(Score).where(Score.estimator.like("bootstrap:%"))))
    assert {(r.source, r.estimator) for r in rows} == {(m, f"bootstrap:{e}") for m in MODELS for e in ("logme", "leep")}
    assert all(len(r.params["draws"]) == 100 and r.params["B"] == 100 for r in rows)
    def no_rescore(*args, **kwargs):
        raise AssertionError("a cached bootstrap draw was re-computed")

    monkeypatch.setattr(rankings_svc, "rescore", no_rescore)
    # an identical request is answered by the ranking memo (the same ranking, see the nleep test);
    # another top_k is a new ranking of the same state: scores and draws come from the cache
    again = rank(client, dict(body, top_k=5))
    assert again["id"] != first["id"]
    with ctx.Session() as s:
        assert s.query(Score).filter(Score.estimator.like("bootstrap:%")).count() == len(rows)
    assert again["computed"] == 0
    assert [(r["interval"], r["tied_with_top"]) for r in again["ranking"]] == \
        [(r["interval"], r["tied_with_top"]) for r in first["ranking"]]
    assert first["ranking"][0]["tied_with_top"] and first["uncertainty"]["B"] == 100


def test_bootstrap_resamples_are_bounded_by_the_estimated_re_scoring_time(client, monkeypatch):
    """B is lowered (never below MIN_BOOTSTRAP) when the cells' point-score times say that B
    resamples would cost more than BOOTSTRAP_SECONDS of re-scoring, and the response says why."""
    from app.db.models import Score
    from app.services import rankings as rankings_svc

    arrays = _target(seed=11)
    did = upload(client, _npz(arrays), "t.npz").json()["id"]
    body = {"target": did, "candidates": "models", "sources": list(MODELS), "estimators": ["logme", "gbc"]}
    monkeypatch.setattr(rankings_svc, "BOOTSTRAP_SECONDS", 1e-9)  # any measured cost is over it
    out = rank(client, body)
    assert out["uncertainty"]["B"] == rankings_svc.MIN_BOOTSTRAP
    warnings = out["uncertainty"]["warnings"]
    assert any("B lowered from 100 to 20" in w and "s)" in w for w in warnings), warnings
    with client.app.state.ctx.Session() as s:  # the lowered draws are cached like any others
        rows = list(s.scalars(select(Score).where(Score.estimator == "bootstrap:gbc")))
    assert rows and all(r.params["B"] == rankings_svc.MIN_BOOTSTRAP for r in rows)
    monkeypatch.setattr(rankings_svc, "BOOTSTRAP_SECONDS", 1e9)  # no time bound: B as asked (a new state)
    again = rank(client, dict(body, estimators=["logme", "hscore"]))
    assert again["uncertainty"]["B"] == 100
