"""The one progress protocol: ``progress(fraction, message=None)``.

Every long-running function (feature extraction, ESM training, fine-tuning, rankings, jobs)
reports through a callable of this shape: ``fraction`` in [0, 1], an optional human-readable
``message``. A callable that takes only the fraction does not satisfy it; wrap it with
``accepting_message``. ``scaled`` maps a sub-task's [0, 1] onto a slice of its caller's.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ProgressFn(Protocol):
    def __call__(self, fraction: float, message: str | None = None, /) -> None: ...


def no_progress(fraction: float, message: str | None = None, /) -> None:
    """A ``ProgressFn`` that reports nothing."""


def scaled(progress: ProgressFn | None, start: float, width: float) -> ProgressFn:
    """Report a sub-task's fraction f as ``start + width * f`` of ``progress`` (nothing when None)."""
    if progress is None:
        return no_progress
    outer: ProgressFn = progress

    def report(fraction: float, message: str | None = None, /) -> None:
        outer(start + width * min(max(float(fraction), 0.0), 1.0), message)

    return report


def accepting_message(fn: Callable[[float], None]) -> ProgressFn:
    """Adapt a fraction-only callback to ``ProgressFn`` (the message is dropped)."""

    def report(fraction: float, message: str | None = None, /) -> None:
        fn(fraction)

    return report
