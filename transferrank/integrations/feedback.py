"""``FeedbackReporter``: report fine-tuning results back to TransferRank as feedback, so the
observed prior (and the transfer matrix) learn from what was actually trained."""
from __future__ import annotations

import math


class FeedbackReporter:
    """``reporter(source, value, note=None)`` posts "``source`` fine-tuned on ``target`` reached
    ``metric`` = ``value``" through ``client`` (a ``transferrank.Client``); ``None`` values and
    NaN are skipped (a failed or pruned run is not an observation). Returns the stored
    ``Feedback`` or None."""

    def __init__(self, client, target, metric: str = "accuracy", higher_is_better: bool = True):
        if not metric or not str(metric).strip():
            raise ValueError("metric must be a non-empty name such as 'accuracy'")
        self.client = client
        self.target = getattr(target, "id", target)
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.reported: list = []

    def __call__(self, source: str, value, note: str | None = None):
        if value is None or not math.isfinite(float(value)):
            return None
        fb = self.client.feedback(source, self.target, self.metric, float(value),
                                  higher_is_better=self.higher_is_better, note=note)
        self.reported.append(fb)
        return fb
