"""``TransferSelector``: choose a source model (or source task) for a dataset, scikit-learn style.

    sel = TransferSelector(candidates="models").fit(texts, labels)
    sel.best_, sel.scores_, sel.ranking_

``fit(X, y)`` takes texts (a list of str), a 2-D feature array (ranked as the single candidate
``features`` for models, or against the catalogue's source tasks for ``candidates="tasks"`` when
the features come from the base encoder), or a dict ``{name: 2-D array}`` of candidate feature
sets on the same examples. With ``server=None`` it ranks in this process with the service code
(``transferrank rank``'s path, the per-user data dir and its score cache); with
``server="http://..."`` it calls that service through ``transferrank.Client``.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, column_or_1d, validate_data

from transferrank._protocol import is_text_list

MAX_CANDIDATES = 10_000


class TransferSelector(BaseEstimator):
    """Rank transfer candidates for ``(X, y)``.

    Parameters
    ----------
    candidates : "models" | "tasks"
        Rank pretrained encoders, or source tasks of the catalogue.
    estimators : list of str or None
        Transferability estimators; None = the service's default combination.
    server : str or None
        Service URL; None ranks in-process.
    api_key : str or None
        API key for ``server`` (default ``$TRANSFERRANK_API_KEY``).
    sources : list of str or None
        Restrict the candidates to these names.
    data_dir : str or None
        In-process data dir (default ``$TRANSFERRANK_DATA_DIR`` or the per-user cache dir).

    Attributes
    ----------
    ranking_ : list of dict
        The ranking as the REST API returns it, best first (``source``, ``rank``, ``score``,
        ``scores`` per estimator, ...).
    best_ : str
        The top candidate's name.
    scores_ : dict
        ``{candidate: combined score}`` (z-score mean across candidates; higher is better).
    n_features_in_ : int
        Feature count when ``X`` was a 2-D array.
    """

    def __init__(self, candidates="models", estimators=None, server=None, api_key=None, sources=None,
                 data_dir=None):
        self.candidates = candidates
        self.estimators = estimators
        self.server = server
        self.api_key = api_key
        self.sources = sources
        self.data_dir = data_dir

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    def _check_params(self) -> None:
        if self.candidates not in ("models", "tasks"):
            raise ValueError(f"candidates must be 'models' or 'tasks', got {self.candidates!r}")
        if self.estimators is not None and (isinstance(self.estimators, str) or not len(self.estimators)):
            raise ValueError("estimators must be None or a non-empty list of estimator names")

    def _validate(self, X, y):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if is_text_list(X):
            y = column_or_1d(y, warn=True)
            if len(X) != len(y):
                raise ValueError(f"X has {len(X)} texts but y has {len(y)} labels")
            if len(X) < 2:
                raise ValueError(f"Found 1 sample(s) (n_samples = {len(X)}); at least 2 labelled texts are needed")
            check_classification_targets(y)
            if hasattr(self, "n_features_in_"):
                del self.n_features_in_
            return [str(x) for x in X], y
        if isinstance(X, dict) and not hasattr(X, "tocsr"):  # a scipy DOK matrix is a dict too
            if not X:
                raise ValueError("X is an empty dict; give {candidate name: 2-D feature array}")
            y = column_or_1d(y, warn=True)
            arrays = {str(k): check_array(v, ensure_min_samples=2) for k, v in X.items()}
            for k, a in arrays.items():
                if a.shape[0] != y.shape[0]:
                    raise ValueError(f"X[{k!r}] has {a.shape[0]} rows but y has {y.shape[0]} labels")
            check_classification_targets(y)
            return arrays, y
        X, y = validate_data(self, X, y, ensure_min_samples=2, dtype=np.float64, y_numeric=False)
        check_classification_targets(y)
        return X, y

    def fit(self, X, y):
        """Rank the candidates for ``(X, y)``; sets ``ranking_``, ``best_``, ``scores_``."""
        self._check_params()
        X, y = self._validate(X, y)
        if np.unique(y).size < 2:
            raise ValueError("y has 1 class; ranking needs at least 2 classes")
        if self.server is None:
            from transferrank import _local

            ranking = _local.rank((X, y), candidates=self.candidates, estimators=self.estimators,
                                  top_k=MAX_CANDIDATES, sources=self.sources, data_dir=self.data_dir)
        else:
            from transferrank.client import Client

            with Client(self.server, self.api_key) as client:
                ranking = client.rank((X, y), candidates=self.candidates, estimators=self.estimators,
                                      top_k=MAX_CANDIDATES, progress=False, sources=self.sources)
        self.ranking_ = ranking.ranking
        self.best_ = ranking.best
        self.scores_ = ranking.scores
        self.estimators_ = list(ranking.estimators)
        return self

    def to_pandas(self):
        """The fitted ranking as a DataFrame (``source``, ``rank``, ``score``, one column per estimator)."""
        from sklearn.utils.validation import check_is_fitted

        from transferrank.models import Ranking

        check_is_fitted(self, "ranking_")
        return Ranking(id=None, status="done", ranking=self.ranking_, estimators=self.estimators_).to_pandas()
