"""Optuna: turn a ranking into a search space and a warm start, and report trials back.

    import optuna
    from transferrank.integrations.optuna import enqueue_top_k, source_distribution, FeedbackCallback

    study = optuna.create_study(direction="maximize")
    enqueue_top_k(study, ranking, top_k=3)             # the first trials try the best-ranked sources
    def objective(trial):
        source = trial.suggest_categorical("source", ranked_sources(ranking))   # ordered by the ranking
        ...
    study.optimize(objective, n_trials=20, callbacks=[FeedbackCallback(client, target, "accuracy")])
"""
from __future__ import annotations

from transferrank.integrations import ranked_sources
from transferrank.integrations.feedback import FeedbackReporter


def _optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("this integration needs Optuna: pip install 'transferrank[optuna]'") from None
    return optuna


def source_distribution(ranking, top_k: int | None = None):
    """A ``CategoricalDistribution`` whose choices are the sources in ranking order (best first)."""
    return _optuna().distributions.CategoricalDistribution(ranked_sources(ranking, top_k))


def suggest_source(trial, ranking, name: str = "source", top_k: int | None = None) -> str:
    """``trial.suggest_categorical(name, sources in ranking order)``."""
    return trial.suggest_categorical(name, ranked_sources(ranking, top_k))


def enqueue_top_k(study, ranking, top_k: int = 3, param: str = "source", fixed_params: dict | None = None,
                  skip_if_exists: bool = True) -> list[str]:
    """Enqueue one trial per top-``top_k`` source, in ranking order, so the study evaluates the
    best-ranked sources first (with ``fixed_params`` for the other hyperparameters, if given).
    Returns the enqueued source names."""
    names = ranked_sources(ranking, top_k)
    for name in names:
        study.enqueue_trial({**(fixed_params or {}), param: name}, skip_if_exists=skip_if_exists)
    return names


class FeedbackCallback:
    """An Optuna study callback: each COMPLETE trial's value is reported as feedback for the
    source in ``trial.params[param]`` (or ``trial.user_attrs[param]`` when the source is fixed
    per study); pruned/failed trials are not observations. The metric's
    direction follows the study's (a minimised loss is reported with higher_is_better=False)."""

    def __init__(self, client, target, metric: str = "accuracy", param: str = "source"):
        self.client, self.target, self.metric, self.param = client, target, metric, param
        self._reporter: FeedbackReporter | None = None

    def __call__(self, study, trial) -> None:
        optuna = _optuna()
        source = trial.params.get(self.param, trial.user_attrs.get(self.param))
        if trial.state != optuna.trial.TrialState.COMPLETE or source is None:
            return
        if self._reporter is None:
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            self._reporter = FeedbackReporter(self.client, self.target, self.metric, higher_is_better=maximize)
        others = {k: v for k, v in trial.params.items() if k != self.param}
        self._reporter(source, trial.value,
                       note=f"optuna study {study.study_name} trial {trial.number} {others}"[:500])

    @property
    def reported(self) -> list:
        return self._reporter.reported if self._reporter is not None else []
