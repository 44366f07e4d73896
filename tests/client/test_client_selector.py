"""TransferSelector: scikit-learn's estimator checks, in-process and against a live service
(the same ranking either way), get_params/set_params/clone."""
from __future__ import annotations

import numpy as np
import pytest
from live_server import FAST_BASE, FAST_MODELS
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import make_texts
from transferrank import TransferSelector


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch, tmp_path_factory):
    """In-process fits use a fresh data dir with the fast base encoder and no demo catalogue."""
    monkeypatch.setenv("TRANSFERRANK_DATA_DIR", str(tmp_path_factory.getbasetemp() / "selector-data"))
    monkeypatch.setenv("TRANSFERRANK_BASE_ENCODER", FAST_BASE)
    monkeypatch.setenv("TRANSFERRANK_SEED_DEMO", "0")
    monkeypatch.delenv("TRANSFERRANK_DATABASE_URL", raising=False)


# Every applicable check passes: the selector has fit only (no predict/transform), so the
# prediction checks do not apply and scikit-learn skips them itself; none is expected to fail.
@parametrize_with_checks([TransferSelector()], expected_failed_checks=lambda est: {})
def test_sklearn_checks(estimator, check):
    check(estimator)


def test_fit_texts_in_process_sets_ranking_best_scores():
    texts, labels = make_texts(45, 3, seed=11)
    sel = TransferSelector(sources=FAST_MODELS).fit(texts, labels)
    assert sel.best_ == sel.ranking_[0]["source"] and set(sel.scores_) == set(FAST_MODELS)
    assert [r["rank"] for r in sel.ranking_] == [1, 2]
    assert list(sel.scores_) == [r["source"] for r in sel.ranking_]
    assert not hasattr(sel, "n_features_in_")
    assert list(sel.to_pandas()["source"]) == list(sel.scores_)


def test_fit_dict_of_feature_sets_picks_the_separable_one():
    rng = np.random.default_rng(3)
    y = np.arange(120) % 4
    X = {"noise": rng.normal(size=(120, 8)), "good": np.eye(4)[y] * 2 + rng.normal(scale=0.4, size=(120, 4))}
    sel = TransferSelector(estimators=["logme", "hscore"]).fit(X, y)
    assert sel.best_ == "good" and sel.scores_["good"] > sel.scores_["noise"]


def test_remote_and_in_process_agree(live):
    texts, labels = make_texts(40, 2, seed=12)
    local = TransferSelector(sources=FAST_MODELS, estimators=["logme"]).fit(texts, labels)
    remote = TransferSelector(sources=FAST_MODELS, estimators=["logme"], server=live.url).fit(texts, labels)
    assert remote.best_ == local.best_
    for name in FAST_MODELS:
        assert remote.ranking_[[r["source"] for r in remote.ranking_].index(name)]["scores"]["logme"] == \
            pytest.approx(local.ranking_[[r["source"] for r in local.ranking_].index(name)]["scores"]["logme"],
                          rel=1e-6)


def test_params_clone_and_errors():
    sel = TransferSelector(candidates="tasks", estimators=["esm_logme"], server="http://x")
    assert sel.get_params() == {"candidates": "tasks", "estimators": ["esm_logme"], "server": "http://x",
                                "api_key": None, "sources": None, "data_dir": None}
    other = clone(sel).set_params(candidates="models", server=None)
    assert (other.candidates, other.server, sel.candidates) == ("models", None, "tasks")
    with pytest.raises(ValueError, match="candidates must be"):
        TransferSelector(candidates="bogus").fit(np.zeros((4, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="unknown estimator"):
        TransferSelector(estimators=["nope"]).fit(np.random.default_rng(0).normal(size=(10, 2)), np.arange(10) % 2)
    with pytest.raises(ValueError, match="1 class"):
        TransferSelector().fit(["a b", "c d", "e f"], [1, 1, 1])
    with pytest.raises(ValueError, match="Unknown label type"):
        TransferSelector().fit(np.zeros((6, 2)), np.linspace(0, 1, 6))
