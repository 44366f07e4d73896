"""Optuna and MLflow integrations with the real libraries, a ranking from a live service, and
fine-tuning results reported back as feedback."""
from __future__ import annotations

import numpy as np
import pytest
from live_server import FAST_MODELS

from conftest import make_texts
from transferrank import Client, TransferSelector
from transferrank.integrations import ranked_sources
from transferrank.integrations.feedback import FeedbackReporter

optuna = pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def target(live):
    texts, labels = make_texts(60, 3, seed=21)
    with Client(live.url) as tr:
        ds = tr.upload((texts, labels), name="integration-target")
        ranking = tr.rank(ds, sources=FAST_MODELS, progress=False)
    return texts, np.asarray(labels), ds, ranking


def _features(name: str, texts: list[str]) -> np.ndarray:
    from app.encoders.registry import get_encoder

    return np.asarray(get_encoder(name).encode(texts), dtype=np.float64)


def test_optuna_enqueues_the_top_sources_in_order_and_reports_feedback(live, target):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from transferrank.integrations.optuna import FeedbackCallback, enqueue_top_k, source_distribution, suggest_source

    texts, y, ds, ranking = target
    dist = source_distribution(ranking)
    assert list(dist.choices) == ranking.sources
    assert list(source_distribution(ranking, top_k=1).choices) == ranking.sources[:1]
    feats = {name: _features(name, texts) for name in ranking.sources}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    assert enqueue_top_k(study, ranking, top_k=2, fixed_params={"C": 1.0}) == ranking.sources

    def objective(trial):
        source = suggest_source(trial, ranking)
        C = trial.suggest_float("C", 1e-2, 1e2, log=True)
        return float(cross_val_score(LogisticRegression(C=C, max_iter=500), feats[source], y, cv=3).mean())

    with Client(live.url) as tr:
        callback = FeedbackCallback(tr, ds, metric="cv_accuracy")
        study.optimize(objective, n_trials=4, callbacks=[callback])
        assert [t.params["source"] for t in study.trials[:2]] == ranking.sources  # ranking order first
        assert [t.params["C"] for t in study.trials[:2]] == [1.0, 1.0]
        stored = tr.list_feedback(target=ds.id)
    mine = [f for f in stored if f.metric == "cv_accuracy"]
    assert len(mine) == len(callback.reported) == 4
    assert [(f.source, f.value) for f in mine] == [(t.params["source"], t.value) for t in study.trials]


def test_mlflow_logs_a_ranking_and_reports_a_run(live, target, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from transferrank.integrations.mlflow import log_ranking, report_run

    _texts, _y, ds, ranking = target
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a file-based store in a temp dir
    exp = mlflow.create_experiment("transferrank-test", artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        with mlflow.start_run(experiment_id=exp) as run:
            params = log_ranking(ranking)
            mlflow.log_param("source", ranking.best)  # a fine-tuning run on the chosen source
            mlflow.log_metric("accuracy", 0.875)
        tc = mlflow.MlflowClient()
        got = tc.get_run(run.info.run_id)
        assert got.data.params["transferrank.best"] == ranking.best == params["transferrank.best"]
        assert got.data.params["transferrank.rank_1"] == ranking.sources[0]
        assert got.data.params["transferrank.target"] == ds.id
        assert got.data.params["transferrank.candidates"] == "models"
        assert got.data.metrics[f"transferrank.score.{ranking.best}"] == pytest.approx(ranking.ranking[0]["score"])
        files = {a.path for a in tc.list_artifacts(run.info.run_id, "transferrank")}
        assert files == {"transferrank/ranking.json", "transferrank/ranking.csv"}
        csv_text = (tmp_path / "artifacts" / run.info.run_id / "artifacts" / "transferrank" / "ranking.csv").read_text()
        assert csv_text.splitlines()[0].startswith("rank,source,score") and ranking.best in csv_text.splitlines()[1]
        with Client(live.url) as tr:
            fb = report_run(tr, run.info.run_id, ds, metric="accuracy")
            assert (fb.source, fb.value, fb.metric) == (ranking.best, 0.875, "accuracy")
            with pytest.raises(ValueError, match="no metric 'f1'"):
                report_run(tr, run.info.run_id, ds, metric="f1")
    finally:
        mlflow.set_tracking_uri(None)


def test_selector_feeds_the_integrations(target):
    texts, y, _ds, _ranking = target
    sel = TransferSelector(sources=FAST_MODELS).fit(texts, y)
    assert ranked_sources(sel) == list(sel.scores_)
    with pytest.raises(ValueError, match="expected a ranking"):
        ranked_sources([])


def test_feedback_reporter_skips_non_observations(live, target):
    _texts, _y, ds, _ranking = target
    with Client(live.url) as tr:
        rep = FeedbackReporter(tr, ds, metric="f1_macro")
        assert rep("glove-6b-50d", float("nan")) is None and rep("glove-6b-50d", None) is None
        fb = rep("tfidf-svd", 0.5)
        assert fb.metric == "f1_macro" and len(rep.reported) == 1
