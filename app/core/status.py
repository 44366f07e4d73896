"""Statuses of jobs, rankings and source tasks: one ``StrEnum`` each, used instead of bare strings.

``StrEnum`` members are ``str``: they compare equal to the strings stored in SQL and serialise
to them in JSON, so the database and the API keep the same values.
"""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A background job, and the ranking that waits on one: queued -> running -> done | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: A ranking goes through the same states as the job that computes it.
RankingStatus = JobStatus

#: States after which nothing changes any more.
FINISHED = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})
#: States of work that has not finished.
UNFINISHED = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class SourceStatus(StrEnum):
    """A source task: pending (embedding) -> training (its ESM) -> ready | failed."""

    PENDING = "pending"
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"
